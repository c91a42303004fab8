"""A learned dynamics ensemble and offline policy evaluation (OPE) through it.

**Model** (MBPO/MOPO style, as Uni-O4's code uses): E probabilistic MLPs map (s, a) to a diagonal
Gaussian over (s' - s, r), trained by Gaussian negative log-likelihood with learned soft bounds on the
log-variance; the ``elites`` members with the lowest held-out MSE are the ones used. Inputs are the
learner's normalised observations; targets are standardised by their dataset mean/std, so one
learning rate suits every dimension.

**OPE** (Uni-O4 §3.3): roll the deterministic policy from dataset states through the model (each
step, each row uses the mean prediction of one randomly chosen elite) and score it by the mean
``Q(s, a)`` over the visited pairs. A policy that steers the model into states the critic values
higher scores higher. The rollout horizon is not fixed by the paper text; ``horizon`` is a setting.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from warmstart.policies.ensemble import EnsembleMLP
from warmstart.learn.optim import guarded_step


@dataclass
class DynamicsConfig:
    members: int = 7
    elites: int = 5
    hidden: tuple[int, ...] = (200, 200)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    holdout: float = 0.1  # share of the data held out to rank the members


class DynamicsEnsemble(torch.nn.Module):
    """E Gaussian models of (s' - s, r) given (s, a); :meth:`step` predicts with the elites."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: DynamicsConfig):
        super().__init__()
        self.cfg, self.obs_dim, self.dims = cfg, obs_dim, (obs_dim, act_dim)
        out = obs_dim + 1
        self.net = EnsembleMLP(cfg.members, obs_dim + act_dim, list(cfg.hidden), 2 * out, activation="silu")
        self.max_logvar = torch.nn.Parameter(torch.full((out,), 0.5))
        self.min_logvar = torch.nn.Parameter(torch.full((out,), -10.0))
        self.register_buffer("target_mean", torch.zeros(out))
        self.register_buffer("target_std", torch.ones(out))
        self.register_buffer("elite_idx", torch.arange(cfg.elites))

    def save(self, directory: str | Path) -> None:
        """Config, shapes and weights (with the elites) in ``dynamics.pt`` (the artifacts store's format)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"config": asdict(self.cfg), "dims": self.dims, "state": self.state_dict()}, d / "dynamics.pt")

    @classmethod
    def load(cls, directory: str | Path) -> "DynamicsEnsemble":
        s = torch.load(Path(directory) / "dynamics.pt", weights_only=False)
        cfg = s["config"]
        cfg["hidden"] = tuple(cfg["hidden"])
        out = cls(*s["dims"], DynamicsConfig(**cfg))
        out.load_state_dict(s["state"])
        return out

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised (mean, logvar) of (s' - s, r), each (E, B, D + 1)."""
        h = self.net(torch.cat([obs, act], -1))
        mean, logvar = h.chunk(2, -1)
        # soft bounds keep the variance away from 0 and infinity (PETS/MBPO)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(self, obs, act, target) -> torch.Tensor:
        """Gaussian NLL of standardised ``target`` (B, D + 1), summed over members."""
        mean, logvar = self(obs, act)
        z = (target - self.target_mean) / self.target_std
        nll = ((mean - z).pow(2) * torch.exp(-logvar) + logvar).mean((1, 2)).sum()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def member_mse(self, obs, act, target) -> torch.Tensor:
        """(E,) held-out MSE of each member's mean, in standardised units."""
        mean, _ = self(obs, act)
        z = (target - self.target_mean) / self.target_std
        return (mean - z).pow(2).mean((1, 2))

    @torch.no_grad()
    def step(self, obs: torch.Tensor, act: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next observations (B, D) and rewards (B,): per row, the mean of one random elite."""
        mean, _ = self(obs, act)  # (E, B, D+1)
        pred = mean * self.target_std + self.target_mean
        pick = self.elite_idx[torch.randint(len(self.elite_idx), (obs.shape[0],), generator=gen)]  # (B,)
        chosen = pred[pick, torch.arange(obs.shape[0])]  # (B, D+1)
        return obs + chosen[:, :-1], chosen[:, -1]


def dynamics_optimizer(model: DynamicsEnsemble) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=model.cfg.lr, weight_decay=model.cfg.weight_decay)


def fit_dynamics(
    model: DynamicsEnsemble,
    obs: torch.Tensor,
    act: torch.Tensor,
    next_obs: torch.Tensor,
    rew: torch.Tensor,
    steps: int,
    gen: torch.Generator,
    optimizer: torch.optim.Optimizer | None = None,
    split_seed: int = 0,
) -> dict[str, float]:
    """Train every member on the same minibatches for ``steps`` steps, then (re)choose the elites
    by held-out MSE. Inputs are tensors over the dataset: (N, D), (N, A), (N, D), (N,). The held-out
    split depends on ``split_seed`` only, so repeated calls (one per engine step, with the same
    ``optimizer``) continue one training run."""
    cfg = model.cfg
    target = torch.cat([next_obs - obs, rew.unsqueeze(-1)], -1)  # (N, D+1)
    perm = torch.randperm(len(obs), generator=torch.Generator().manual_seed(split_seed))
    n_hold = max(1, int(cfg.holdout * len(obs)))
    hold, train = perm[:n_hold], perm[n_hold:]
    with torch.no_grad():
        model.target_mean.copy_(target[train].mean(0))
        model.target_std.copy_(target[train].std(0).clamp(min=1e-6))
    opt = optimizer or dynamics_optimizer(model)
    loss = torch.tensor(0.0)
    skipped = 0
    for _ in range(steps):
        idx = train[torch.randint(len(train), (cfg.batch_size,), generator=gen)]
        loss = model.loss(obs[idx], act[idx], target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        skipped += guarded_step(opt, model.parameters(), math.inf, loss.item())[1]
    mse = model.member_mse(obs[hold], act[hold], target[hold])
    model.elite_idx.copy_(mse.argsort()[: cfg.elites])
    return {"loss_dynamics": loss.item(), "holdout_mse": float(mse[model.elite_idx].mean()), "skipped_updates": skipped}


@torch.no_grad()
def ope_score(
    act_fn: Callable[[torch.Tensor], torch.Tensor],
    q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    model: DynamicsEnsemble,
    start_obs: torch.Tensor,
    policies: int,
    horizon: int,
    gen: torch.Generator | None = None,
    obs_clip: float | None = None,
) -> torch.Tensor:
    """Mean Q over the pairs that ``policies`` deterministic policies visit in the model, each
    rolled from the same ``start_obs`` (B, D). Returns the (policies,) scores.

    ``act_fn(obs (P, B, D)) -> actions (P, B, A)``: policy p acts on its own rows;
    ``q_fn(obs (P, B, D), act (P, B, A)) -> (P, B)``.
    """
    P, (B, D) = policies, start_obs.shape
    obs = start_obs.unsqueeze(0).expand(P, B, D)
    total = torch.zeros(P)
    for _ in range(horizon):
        a = act_fn(obs)  # (P, B, A)
        total += q_fn(obs, a).mean(1)
        nxt, _ = model.step(obs.reshape(P * B, D), a.reshape(P * B, -1), gen)
        obs = nxt.view(P, B, D)
        if obs_clip is not None:
            obs = obs.clamp(-obs_clip, obs_clip)
    return total / horizon
