"""MLP actor-critic for vector observations (Gymnasium tasks): ``kind: mlp``.

Separate actor and critic networks (CleanRL's ``Agent``), orthogonal init (hidden gain sqrt(2),
actor head 0.01, critic head 1), and an action head per space:

* ``Discrete(n)`` and ``MultiDiscrete(nvec)``: one categorical per dimension. Internally a Discrete
  space is a MultiDiscrete with one dimension; logits are laid out as (B, M, K) with K = max(nvec),
  the padding logits set to -1e9 (probability 0, no NaN in the entropy);
* ``Box``: a diagonal Gaussian with a state-independent learned log-std; samples are unclipped (the
  env wrapper clips them to the bounds, the log-prob is of the unclipped sample, as in CleanRL).

Options: running observation normalisation (statistics live in the policy, so a saved policy
carries them and evaluation uses them) and, for PDPPO, a second critic ``V_post`` on post-decision
states (``post_critic: true``), which have the observation's layout and share its normalisation.

Saved as ``model.safetensors`` + ``policy.json`` (``kind: mlp``); :meth:`MLPPolicy.load` rebuilds it from the
directory alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from warmstart.config import PluginConfig
from warmstart.registry import POLICIES

CONFIG_FILE = "policy.json"  # with "kind": "mlp", which is how `warmstart eval` finds the loader
WEIGHTS_FILE = "model.safetensors"


class MLPPolicyConfig(PluginConfig):
    hidden: list[int] = Field([64, 64], description="hidden layer sizes of both the actor and the critic(s)")
    activation: Literal["tanh", "relu"] = Field("tanh", description="hidden activation")
    critic_activation: Literal["tanh", "relu"] | None = Field(
        None, description="hidden activation of the critic(s), if it differs from the actor's (PDPPO paper: relu actor, tanh critics)"
    )
    normalize_obs: bool = Field(
        False, description="normalise observations with running mean/std (updated by the learner during rollouts)"
    )
    obs_clip: float = Field(10.0, gt=0, description="clip normalised observations to [-obs_clip, obs_clip]")
    post_critic: bool = Field(
        False, description="add a second critic V_post on post-decision states (PDPPO); needs an env that reports them"
    )
    init_log_std: float = Field(0.0, description="initial log-std of the Gaussian head (Box action spaces)")


class RunningMeanStd(nn.Module):
    """Running mean and variance over a stream of batches (parallel-variance update, as in
    SB3's ``VecNormalize`` and Gymnasium's ``NormalizeObservation``). Buffers, so they are saved
    with the weights."""

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64).reshape(-1, *self.mean.shape)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + b_count
        new_mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)


def _layer(i: int, o: int, gain: float) -> nn.Linear:
    lin = nn.Linear(i, o)
    nn.init.orthogonal_(lin.weight, gain)
    nn.init.zeros_(lin.bias)
    return lin


def _mlp(inp: int, hidden: list[int], out: int, act: str, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [_layer(inp, h, math.sqrt(2)), nn.Tanh() if act == "tanh" else nn.ReLU()]
        inp = h
    layers.append(_layer(inp, out, out_gain))
    return nn.Sequential(*layers)


def action_spec(space) -> dict:
    """A JSON-able description of a Gymnasium action space (what the policy needs to rebuild)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "nvec": [int(space.n)], "start": [int(space.start)]}
    if isinstance(space, spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise ValueError(f"MultiDiscrete action spaces must be 1-D for the MLP policy, got nvec shape {space.nvec.shape}")
        return {"type": "multidiscrete", "nvec": [int(n) for n in space.nvec], "start": [int(s) for s in space.start]}
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise ValueError(f"Box action spaces must be 1-D for the MLP policy, got shape {space.shape}")
        return {"type": "box", "dim": int(space.shape[0]), "low": space.low.tolist(), "high": space.high.tolist()}
    raise ValueError(
        f"the MLP policy supports Discrete, MultiDiscrete and Box action spaces, not {type(space).__name__}"
    )


class MLPPolicy(nn.Module):
    """Actor-critic MLP. All methods take *normalised* observations except :meth:`predict` and
    :meth:`normalize_obs`; the learner normalises once per step and stores what it fed the nets."""

    def __init__(self, obs_dim: int, spec: dict, cfg: MLPPolicyConfig):
        super().__init__()
        self.obs_dim, self.spec, self.cfg = obs_dim, spec, cfg
        self.continuous = spec["type"] == "box"
        h, act = list(cfg.hidden), cfg.activation
        cact = cfg.critic_activation or act
        self.critic = _mlp(obs_dim, h, 1, cact, 1.0)
        self.post_critic = _mlp(obs_dim, h, 1, cact, 1.0) if cfg.post_critic else None
        if self.continuous:
            self.actor = _mlp(obs_dim, h, spec["dim"], act, 0.01)
            self.log_std = nn.Parameter(torch.full((spec["dim"],), float(cfg.init_log_std)))
        else:
            nvec = spec["nvec"]
            self.actor = _mlp(obs_dim, h, sum(nvec), act, 0.01)
            self.M, self.K = len(nvec), max(nvec)
            # (M, K) indices into [logits, -1e9] so ragged heads become one padded (B, M, K) tensor
            idx = torch.full((self.M, self.K), sum(nvec), dtype=torch.long)
            off = 0
            for m, n in enumerate(nvec):
                idx[m, :n] = torch.arange(off, off + n)
                off += n
            self.register_buffer("_head_index", idx, persistent=False)
            self._ragged = len(set(nvec)) > 1
            self.register_buffer("_start", torch.tensor(spec["start"], dtype=torch.long), persistent=False)
        self.obs_rms = RunningMeanStd((obs_dim,))

    # ------------------------------------------------------------------------------- building

    @classmethod
    def from_spaces(cls, observation_space, action_space, cfg: MLPPolicyConfig) -> "MLPPolicy":
        shape = getattr(observation_space, "shape", None)
        if shape is None or len(shape) != 1:
            raise ValueError(
                f"the MLP policy needs a flat Box observation space, got {observation_space}; "
                "wrap the env with gymnasium.wrappers.FlattenObservation"
            )
        return cls(int(shape[0]), action_spec(action_space), cfg)

    # ------------------------------------------------------------------------------- forward

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations (B, D) -> network inputs (float32), with the running statistics."""
        obs = obs.float()
        if not self.cfg.normalize_obs:
            return obs
        mean, std = self.obs_rms.mean.float(), (self.obs_rms.var.float() + 1e-8).sqrt()
        return ((obs - mean) / std).clamp(-self.cfg.obs_clip, self.cfg.obs_clip)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)  # (B,)

    def post_value(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_critic is None:
            raise RuntimeError("this policy has no post-decision critic: set `post_critic: true` in its config")
        return self.post_critic(x).squeeze(-1)  # (B,)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.actor(x)  # (B, sum(nvec))
        if not self._ragged:
            return flat.view(-1, self.M, self.K)
        pad = flat.new_full((flat.shape[0], 1), -1e9)
        return torch.cat([flat, pad], 1)[:, self._head_index]  # (B, M, K)

    def sample(self, x: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """Actions (B, ...) in the env's encoding and their log-probs (B,) for inputs ``x`` (B, D)."""
        if self.continuous:
            mean = self.actor(x)  # (B, A)
            if deterministic:
                a = mean
            else:
                a = mean + self.log_std.exp() * torch.randn(mean.shape, generator=generator)
            return a, _gaussian_logp(a, mean, self.log_std)
        logp_all = torch.log_softmax(self._logits(x), -1)  # (B, M, K)
        if deterministic:
            idx = logp_all.argmax(-1)
        else:  # no distribution object: on tiny batches its bookkeeping costs more than the math
            idx = torch.multinomial(logp_all.exp().view(-1, self.K), 1, generator=generator).view(logp_all.shape[:2])
        logp = logp_all.gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)  # (B,)
        return self._to_env(idx), logp

    def evaluate_actions(
        self, x: torch.Tensor, actions: torch.Tensor, entropy_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob (B,), entropy (B,)) of stored ``actions`` under the current actor.
        ``entropy_grad=False`` computes the entropy for logging only (no entropy bonus)."""
        if self.continuous:
            mean = self.actor(x)
            ent = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(mean.shape[0])
            return _gaussian_logp(actions, mean, self.log_std), ent
        logits = self._logits(x)  # (B, M, K)
        idx = self._from_env(actions)  # (B, M)
        logp = torch.log_softmax(logits, -1)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp.exp() * logp).sum(-1).sum(-1)  # (B,), summed over the M heads
        return logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1), ent

    def _to_env(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx + self._start
        return idx[:, 0] if self.spec["type"] == "discrete" else idx

    def _from_env(self, actions: torch.Tensor) -> torch.Tensor:
        a = actions.long()
        if self.spec["type"] == "discrete":
            a = a.unsqueeze(-1)
        return a - self._start

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = True, generator: torch.Generator | None = None) -> np.ndarray:
        """Raw observations (B, D) -> env actions (B, ...) as numpy (Box actions clipped to bounds)."""
        x = self.normalize_obs(torch.as_tensor(obs))
        a, _ = self.sample(x, deterministic=deterministic, generator=generator)
        a = a.numpy()
        if self.continuous:
            a = np.clip(a, self.spec["low"], self.spec["high"])
        return a

    # ------------------------------------------------------------------------------- save / load

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        # clone: a learner may keep the weights as views of one flat buffer (shared storage)
        save_file({k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}, str(d / WEIGHTS_FILE))
        meta = {"kind": "mlp", "format": "warmstart-mlp-policy", "obs_dim": self.obs_dim, "action": self.spec, "config": self.cfg.model_dump()}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    def load_weights(self, directory: str | Path) -> None:
        """Load weights (and observation statistics) in place, so optimizers keep their params."""
        self.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))

    @classmethod
    def load(cls, directory: str | Path) -> "MLPPolicy":
        d = Path(directory)
        if not (d / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{d} holds no {CONFIG_FILE}: not a saved MLP policy")
        meta = json.loads((d / CONFIG_FILE).read_text())
        pol = cls(meta["obs_dim"], meta["action"], MLPPolicyConfig.model_validate(meta["config"]))
        pol.load_weights(d)
        return pol


def _gaussian_logp(a: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over action dims: (B, A) -> (B,)."""
    return (-0.5 * ((a - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@POLICIES.register("mlp", MLPPolicyConfig, "MLP actor-critic for Gymnasium tasks (Discrete/MultiDiscrete/Box)", load=lambda d: MLPPolicy.load(d))
def build_mlp_policy(cfg: MLPPolicyConfig, task: Any, seed: int) -> MLPPolicy:
    """Build the policy for a task that exposes ``observation_space`` and ``action_space``."""
    if not hasattr(task, "action_space"):
        from warmstart.errors import ConfigError

        raise ConfigError(
            f"policy kind 'mlp' needs a Gymnasium task (kind: gym); the task {type(task).__name__} has no action space"
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return MLPPolicy.from_spaces(task.observation_space, task.action_space, cfg)

