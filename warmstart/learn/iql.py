"""Critics on a fixed dataset: IQL's Q and V (Kostrikov et al. 2021) and a Monte-Carlo V.

IQL never queries actions outside the data: V regresses on the Q of *dataset* actions with an
asymmetric (expectile) loss, so with expectile tau > 0.5 it approaches the value of the best actions
the data supports, and Q regresses on ``r + gamma * V(s')``:

    L_V = E[ |tau - 1(u < 0)| * u^2 ],  u = min_k Q_target_k(s, a) - V(s)
    L_Q = E[ sum_k 0.5 * (r + gamma * (1 - done) * V(s') - Q_k(s, a))^2 ]

with two Q-nets (the minimum is the "double-Q min"), a Polyak-averaged target copy for V's
regression target, tau = 0.7 and gamma = 0.99 as Uni-O4's code uses. The Monte-Carlo V regresses on
discounted returns-to-go of the dataset's episodes; Uni-O4 keeps it to start the online critic.
All networks take *normalised* observations (the learner's job).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from warmstart.functional import discounted_returns, value_loss
from warmstart.learn.optim import guarded_step
from warmstart.policies.ensemble import EnsembleMLP


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Elementwise ``|expectile - 1(diff < 0)| * diff^2`` (``diff`` = target - prediction)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.pow(2)


@dataclass
class IQLConfig:
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    gamma: float = 0.99
    expectile: float = 0.7
    polyak: float = 0.005  # target-network averaging rate
    batch_size: int = 256


class IQLCritics(torch.nn.Module):
    """Two Q-nets on (s, a), their Polyak target, and V on s; :meth:`update` is one IQL step."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig):
        super().__init__()
        self.cfg, self.dims = cfg, (obs_dim, act_dim)
        self.q = EnsembleMLP(2, obs_dim + act_dim, list(cfg.hidden), 1, activation="relu")
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = EnsembleMLP(1, obs_dim, list(cfg.hidden), 1, activation="relu")
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=cfg.lr)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=cfg.lr)

    def save(self, directory: str | Path) -> None:
        """Config, shapes, weights and optimiser states in ``critics.pt`` (the artifacts store's format)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"config": asdict(self.cfg), "dims": self.dims, "state": self.state_dict(),
                    "q_opt": self.q_opt.state_dict(), "v_opt": self.v_opt.state_dict()}, d / "critics.pt")

    @classmethod
    def load(cls, directory: str | Path) -> "IQLCritics":
        s = torch.load(Path(directory) / "critics.pt", weights_only=False)
        cfg = s["config"]
        cfg["hidden"] = tuple(cfg["hidden"])
        out = cls(*s["dims"], IQLConfig(**cfg))
        out.load_state_dict(s["state"])
        out.q_opt.load_state_dict(s["q_opt"])
        out.v_opt.load_state_dict(s["v_opt"])
        return out

    def q_values(self, obs: torch.Tensor, act: torch.Tensor, target: bool = False) -> torch.Tensor:
        """(2, B): both Q-nets; ``obs`` (B, D) with ``act`` (B, A), or (E, B, .) for both."""
        net = self.q_target if target else self.q
        return net(torch.cat([obs, act], -1)).squeeze(-1)

    def q_min(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Double-Q minimum, (B,) -- or (E, B) when ``act`` is (E, B, A) (obs broadcast)."""
        if act.dim() == 3:  # several action sets for the same states: fold them into the batch
            E, B, A = act.shape
            x = torch.cat([obs.unsqueeze(0).expand(E, B, -1), act], -1).reshape(E * B, -1)
            return self.q(x).squeeze(-1).min(0).values.view(E, B)
        return self.q_values(obs, act).min(0).values

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.v(obs)[0].squeeze(-1)  # (B,)

    def update(self, obs, act, rew, next_obs, done) -> dict[str, float]:
        """One gradient step on V, then on Q, then the target average (IQL's order)."""
        cfg = self.cfg
        with torch.no_grad():
            q_t = self.q_values(obs, act, target=True).min(0).values  # (B,)
        v = self.value(obs)
        v_loss = expectile_loss(q_t - v, cfg.expectile).mean()
        self.v_opt.zero_grad(set_to_none=True)
        v_loss.backward()
        skipped = guarded_step(self.v_opt, self.v.parameters(), math.inf, v_loss.item())[1]
        with torch.no_grad():
            target = rew + cfg.gamma * (1.0 - done) * self.value(next_obs)  # (B,)
        q = self.q_values(obs, act)  # (2, B)
        q_loss = value_loss(q, target.expand_as(q)).mean(1).sum()  # each Q-net's 0.5 * MSE
        self.q_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        skipped += guarded_step(self.q_opt, self.q.parameters(), math.inf, q_loss.item())[1]
        with torch.no_grad():
            for p, pt in zip(self.q.parameters(), self.q_target.parameters()):
                pt.lerp_(p, cfg.polyak)
        return {"loss_v": v_loss.item(), "loss_q": q_loss.item(), "q_mean": q.detach().mean().item(), "v_mean": v.detach().mean().item(),
                "skipped_updates": int(skipped)}


def mc_returns(rewards: np.ndarray, episode_index: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return-to-go of every step of a flat dataset whose episodes lie in order
    (no bootstrap at an episode's end: the data holds nothing beyond it)."""
    last = np.r_[episode_index[1:] != episode_index[:-1], True].astype(np.float32)  # (N,) episode ends
    out = discounted_returns(torch.as_tensor(rewards, dtype=torch.float64), torch.as_tensor(last, dtype=torch.float64), gamma)
    return out.numpy().astype(np.float32)


def fit_value(
    net: torch.nn.Module,
    obs: torch.Tensor,
    returns: torch.Tensor,
    steps: int,
    batch_size: int,
    gen: torch.Generator,
    opt: torch.optim.Optimizer,
) -> float:
    """``steps`` minibatch regressions of ``net(obs) -> returns``; returns the last loss. ``net``
    maps (B, D) to (B, 1) (an ``MLPPolicy`` critic)."""
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(len(obs), (batch_size,), generator=gen)
        loss = value_loss(net(obs[idx]).squeeze(-1), returns[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        guarded_step(opt, net.parameters(), math.inf, loss.item())
    return loss.item()
