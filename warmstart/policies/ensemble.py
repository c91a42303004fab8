"""Ensembles of small MLPs evaluated as one batched network, and Gaussian policy ensembles.

Uni-O4 trains 4 behaviour-cloned policies, 2 Q-nets and 7 dynamics models. On a CPU, a Python loop
over E tiny networks costs more in kernel launches than in math; :class:`EnsembleMLP` keeps the E
members' weights stacked as (E, in, out) tensors and runs all of them with one ``baddbmm`` per
layer. Members stay independent: no parameter is shared, so summing their losses gives each member
exactly its own gradient.

:class:`GaussianEnsemble` is E diagonal-Gaussian policies with a state-independent log-std, the same
parametrisation as :class:`warmstart.policies.mlp.MLPPolicy`'s actor, so one member can be copied
into an ``MLPPolicy`` (:meth:`GaussianEnsemble.export_member`) to continue online.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


class EnsembleMLP(nn.Module):
    """E independent MLPs ``in -> hidden... -> out``. Input (B, in) is shared by all members,
    (E, B, in) gives each its own rows; output is (E, B, out)."""

    def __init__(self, members: int, inp: int, hidden: list[int], out: int, activation: str = "tanh", out_gain: float = 1.0):
        super().__init__()
        self.members, self.activation = members, activation
        sizes = [inp, *hidden, out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
            gain = out_gain if k == len(sizes) - 2 else math.sqrt(2)
            w = torch.empty(members, i, o)
            for e in range(members):  # orthogonal per member, as the single-network policies init
                lin = torch.empty(o, i)  # nn.Linear's layout
                nn.init.orthogonal_(lin, gain)
                w[e] = lin.T
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, o)))
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, *x.shape)  # (E, B, in)
        n = len(self.weights)
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)  # (E, B, o)
            if k < n - 1:
                x = self.act(x)
        return x

    def member_state(self, e: int) -> dict[str, torch.Tensor]:
        """Member ``e`` as an ``nn.Sequential(Linear, act, Linear, act, ..., Linear)`` state dict."""
        out = {}
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{2 * k}.weight"] = w[e].detach().T.clone()
            out[f"{2 * k}.bias"] = b[e, 0].detach().clone()
        return out

    def load_member(self, e: int, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`member_state`."""
        with torch.no_grad():
            for k, (w, b) in enumerate(zip(self.weights, self.biases)):
                w[e].copy_(state[f"{2 * k}.weight"].T)
                b[e, 0].copy_(state[f"{2 * k}.bias"])


def gaussian_logp(a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of diagonal Gaussians summed over the last (action) dim: (..., A) -> (...)."""
    return (-0.5 * ((a - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class GaussianEnsemble(nn.Module):
    """E Gaussian policies: mean = MLP(x), std = exp(log_std) per member (state-independent)."""

    def __init__(self, members: int, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "tanh", init_log_std: float = 0.0):
        super().__init__()
        self.members, self.obs_dim, self.act_dim = members, obs_dim, act_dim
        self.hidden, self.activation_name = list(hidden), activation
        self.mean_net = EnsembleMLP(members, obs_dim, hidden, act_dim, activation, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((members, 1, act_dim), float(init_log_std)))

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean_net(x)  # (E, B, A)

    def log_prob(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(E, B): each member's log-density of actions ``a`` ((B, A) shared or (E, B, A))."""
        return gaussian_logp(a, self.mean(x), self.log_std)

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions (E, B, A) drawn from each member and their log-probs (E, B)."""
        mean = self.mean(x)
        a = mean + self.log_std.exp() * torch.randn(mean.shape, generator=generator)
        return a, gaussian_logp(a, mean, self.log_std)

    def copy_member(self, dst: int, src: "GaussianEnsemble", src_member: int) -> None:
        """Overwrite member ``dst`` with member ``src_member`` of ``src`` (same architecture)."""
        self.mean_net.load_member(dst, src.mean_net.member_state(src_member))
        with torch.no_grad():
            self.log_std[dst].copy_(src.log_std[src_member])

    def save(self, directory: str | Path) -> None:
        """``ensemble.json`` (shape) + ``ensemble.pt`` (weights): what the artifacts store writes."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"members": self.members, "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "hidden": self.hidden, "activation": self.activation_name}
        (d / "ensemble.json").write_text(json.dumps(meta))
        torch.save(self.state_dict(), d / "ensemble.pt")

    @classmethod
    def load(cls, directory: str | Path) -> "GaussianEnsemble":
        d = Path(directory)
        meta = json.loads((d / "ensemble.json").read_text())
        ens = cls(meta["members"], meta["obs_dim"], meta["act_dim"], meta["hidden"], meta["activation"])
        ens.load_state_dict(torch.load(d / "ensemble.pt"))
        return ens

    def export_member(self, e: int, policy) -> None:
        """Copy member ``e`` into an :class:`~warmstart.policies.mlp.MLPPolicy`'s actor and log-std
        (same hidden sizes and activation)."""
        if list(policy.cfg.hidden) != self.hidden or policy.cfg.activation != self.activation_name:
            raise ValueError(
                f"cannot copy an ensemble member with hidden {self.hidden}/{self.activation_name} into a policy "
                f"with hidden {list(policy.cfg.hidden)}/{policy.cfg.activation}: make policy.hidden and the "
                "ensemble's hidden the same"
            )
        policy.actor.load_state_dict(self.mean_net.member_state(e))
        with torch.no_grad():
            policy.log_std.copy_(self.log_std[e, 0])


def clip_grad_norm_per_member(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip each member's gradient to global norm ``max_norm`` on its own (dim 0 of every
    parameter is the member), as if each member had its own optimiser. Returns the (E,) norms."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads)  # (E,)
    norms = sq.sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms
