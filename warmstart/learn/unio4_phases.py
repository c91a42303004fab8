"""Uni-O4's stages as engine phases: each a flat learner that takes what it needs from the run's
artifacts and leaves what it makes there.

| kind | needs | leaves | one engine step |
| --- | --- | --- | --- |
| ``offline_data`` | an env task, an MLP policy with ``normalize_obs`` | ``offline_dataset`` (and the policy's observation statistics) | the whole generation / cache load |
| ``iql`` | ``offline_dataset`` | ``iql_critics`` | ``updates_per_step`` IQL updates |
| ``dynamics`` | ``offline_dataset`` | ``dynamics`` | ``updates_per_step`` model updates (elites chosen at the end) |
| ``mc_value`` | ``offline_dataset`` | the policy's critic, ``mc_reward_scale`` | ``updates_per_step`` regression updates |
| ``ensemble_bc`` | ``offline_dataset`` (+ ``iql_critics``, ``dynamics`` when it selects) | ``bc_ensemble`` | ``updates_per_step`` BC updates |
| ``offline_ppo`` | ``bc_ensemble``, ``iql_critics``, ``dynamics`` | the selected member in the policy | ``updates_per_step`` PPO updates |

Each puts what it leaves into the run's artifacts store at its end (``ctx.artifacts``, written under
``<run>/artifacts``), so a resumed run finds it; ``offline_dataset`` is recorded as the path of the
Minari dataset, not copied. The online stage is warmstart's ``ppo`` phase with ``freeze_obs_norm: true`` and the offline
critic's ``reward_scale``. ``ensemble_bc`` with ``select: true`` is the BC baseline, ``offline_ppo``
with ``gated: false`` the one-step baseline.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from warmstart.config import PhaseConfig, Strict
from warmstart.contracts import ActorCriticPolicy, EnvTask, PhaseBase
from warmstart.errors import ConfigError
from warmstart.learn.dynamics import DynamicsConfig, DynamicsEnsemble, dynamics_optimizer, fit_dynamics
from warmstart.learn.iql import IQLConfig, IQLCritics, fit_value, mc_returns
from warmstart.learn.offline_data import DataGenConfig, generate
from warmstart.learn.unio4 import OfflinePPO, OfflineTensors, bc_step, select_member, set_obs_stats, to_tensors
from warmstart.policies.ensemble import GaussianEnsemble
from warmstart.registry import PHASES
from warmstart.tasks.offline import OfflineDataset, load_minari_dir

DATASET = "offline_dataset"
REQUIRES = {"task": EnvTask, "policy": ActorCriticPolicy}
_LOADED: dict[str, tuple[OfflineDataset, OfflineTensors]] = {}  # dataset path -> (data, normalised tensors)


def _need(ctx, cfg: PhaseConfig, name: str, made_by: str):
    """The artifact ``name``, or an error naming the phase that should have made it."""
    if name not in ctx.artifacts:
        raise ConfigError(
            f"phase {cfg.label!r} needs the artifact {name!r}, which a {made_by!r} phase earlier in the recipe makes; "
            f"add one before {cfg.label!r}."
        )
    return ctx.artifacts.get(name)


def _data(ctx, cfg) -> tuple[OfflineDataset, OfflineTensors]:
    """The run's dataset and its tensors normalised by the policy's (= the data's) statistics."""
    path = str(_need(ctx, cfg, DATASET, "offline_data"))
    if path not in _LOADED:
        ds = load_minari_dir(path)
        _LOADED.clear()  # one dataset at a time is all a run needs
        _LOADED[path] = (ds, to_tensors(ds, ctx.policy))
    return _LOADED[path]


class _Updates(PhaseConfig):
    updates_per_step: int = Field(100, ge=1, description="gradient updates per engine step")
    batch_size: int = Field(256, ge=1, description="transitions per update")


def _register(kind: str, config, description: str):
    return PHASES.register(kind, config, description, requires=REQUIRES)


# ---------------------------------------------------------------------------------------- dataset


class OfflineDataConfig(PhaseConfig):
    steps: int = Field(1, ge=1, le=1, description="always 1: the first step makes or loads the data")
    data_dir: str = Field(".cache/minari", description="where generated datasets are cached (a Minari root per generation key)")
    dataset: Literal["medium", "medium-replay", "medium-expert"] = Field("medium", description="which of the three datasets the learners use")
    generation: DataGenConfig = Field(default_factory=DataGenConfig, description="how the datasets are made (the cache key)")


class OfflineDataPhase(PhaseBase):
    key_metrics = ("dataset_normalized",)

    def __init__(self, cfg: OfflineDataConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        if not ctx.policy.cfg.normalize_obs:
            raise ConfigError(f"phase {cfg.label!r}: Uni-O4 normalises observations by the data's statistics; "
                              "set policy.normalize_obs: true")
        env_id = getattr(getattr(ctx.task, "cfg", None), "env_id", None)
        if cfg.generation.env_id != env_id:
            raise ConfigError(
                f"phase {cfg.label!r}: generation.env_id {cfg.generation.env_id!r} differs from task.env_id {env_id!r}; "
                "the data must come from the env the policy acts in."
            )

    def step(self, step: int, global_step: int) -> dict[str, float]:
        t = time.time()
        ds = generate(self.cfg.generation, self.cfg.data_dir, log=lambda m: None)[self.cfg.dataset]
        obs_space, act_space = self.ctx.task.observation_space, self.ctx.task.action_space
        ds.check_spaces(int(obs_space.shape[0]), int(act_space.shape[0]), f"phase {self.cfg.label!r}")
        set_obs_stats(self.ctx.policy, ds)
        self.ctx.artifacts.put(DATASET, Path(ds.info["path"]))
        ret = ds.episode_returns()
        return {"dataset_steps": len(ds), "dataset_episodes": len(ret), "dataset_return": float(ret.mean()),
                "dataset_normalized": float(ds.normalized_score(ret.mean())), "time_data_s": time.time() - t}


@_register("offline_data", OfflineDataConfig, "Minari datasets (medium, medium-replay, medium-expert) made by PPO, cached")
def build_offline_data(cfg: OfflineDataConfig, ctx) -> OfflineDataPhase:
    return OfflineDataPhase(cfg, ctx)


# -------------------------------------------------------------------------------------------- IQL


class IQLPhaseConfig(_Updates):
    hidden: list[int] = Field([128, 128], description="hidden sizes of the Q- and V-nets")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate of Q and V")
    gamma: float = Field(0.99, ge=0, le=1, description="discount")
    expectile: float = Field(0.7, gt=0, lt=1, description="IQL expectile tau (Uni-O4: 0.7)")
    polyak: float = Field(0.005, gt=0, le=1, description="target-network averaging rate")


class IQLPhase(PhaseBase):
    key_metrics = ("loss_q", "loss_v", "q_mean")

    def __init__(self, cfg: IQLPhaseConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.critics: IQLCritics | None = None

    def _build(self) -> IQLCritics:
        if self.critics is None:
            ds, _ = _data(self.ctx, self.cfg)
            c = self.cfg
            with torch.random.fork_rng():
                torch.manual_seed(self.ctx.seed)
                self.critics = IQLCritics(ds.obs_dim, ds.act_dim, IQLConfig(tuple(c.hidden), c.lr, c.gamma, c.expectile, c.polyak, c.batch_size))
        return self.critics

    def step(self, step: int, global_step: int) -> dict[str, float]:
        critics, (_, data) = self._build(), _data(self.ctx, self.cfg)
        gen = self.ctx.generator(global_step, salt=71)
        t = time.perf_counter()
        for _ in range(self.cfg.updates_per_step):
            m = critics.update(*data.batch(self.cfg.batch_size, gen))
        m["updates_per_s"] = self.cfg.updates_per_step / (time.perf_counter() - t)
        return m

    def on_end(self) -> None:
        self.ctx.artifacts.put("iql_critics", self._build())

    def state_dict(self) -> dict:
        c = self._build()
        return {"critics": c.state_dict(), "q_opt": c.q_opt.state_dict(), "v_opt": c.v_opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        c = self._build()
        c.load_state_dict(s["critics"])
        c.q_opt.load_state_dict(s["q_opt"])
        c.v_opt.load_state_dict(s["v_opt"])


@_register("iql", IQLPhaseConfig, "IQL's Q and V on an offline dataset (expectile, double-Q min)")
def build_iql(cfg: IQLPhaseConfig, ctx) -> IQLPhase:
    return IQLPhase(cfg, ctx)


# --------------------------------------------------------------------------------------- dynamics


class DynamicsPhaseConfig(_Updates):
    members: int = Field(7, ge=1, description="models in the ensemble (Uni-O4: 7)")
    elites: int = Field(5, ge=1, description="members used for rollouts, lowest held-out error (Uni-O4: 5)")
    hidden: list[int] = Field([128, 128], description="hidden sizes of each model")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    holdout: float = Field(0.1, gt=0, lt=1, description="share of the data held out to choose the elites")


class DynamicsPhase(PhaseBase):
    key_metrics = ("loss_dynamics", "holdout_mse")

    def __init__(self, cfg: DynamicsPhaseConfig, ctx):
        if cfg.elites > cfg.members:
            raise ConfigError(f"phase {cfg.label!r}: elites ({cfg.elites}) must be at most members ({cfg.members})")
        self.cfg, self.ctx = cfg, ctx
        self.model: DynamicsEnsemble | None = None

    def _build(self) -> DynamicsEnsemble:
        if self.model is None:
            (ds, _), c = _data(self.ctx, self.cfg), self.cfg
            with torch.random.fork_rng():
                torch.manual_seed(self.ctx.seed)
                self.model = DynamicsEnsemble(ds.obs_dim, ds.act_dim, DynamicsConfig(c.members, c.elites, tuple(c.hidden), c.lr, 1e-5, c.batch_size, c.holdout))
            self.opt = dynamics_optimizer(self.model)
        return self.model

    def step(self, step: int, global_step: int) -> dict[str, float]:
        model, (_, data) = self._build(), _data(self.ctx, self.cfg)
        gen = self.ctx.generator(global_step, salt=72)
        t = time.perf_counter()
        m = fit_dynamics(model, data.obs, data.act, data.next_obs, data.rew, self.cfg.updates_per_step, gen,
                         optimizer=self.opt, split_seed=self.ctx.seed)
        m["updates_per_s"] = self.cfg.updates_per_step / (time.perf_counter() - t)
        return m

    def on_end(self) -> None:
        self.ctx.artifacts.put("dynamics", self._build())

    def state_dict(self) -> dict:
        return {"model": self._build().state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self._build().load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])


@_register("dynamics", DynamicsPhaseConfig, "a probabilistic dynamics ensemble (elites) for offline policy evaluation")
def build_dynamics(cfg: DynamicsPhaseConfig, ctx) -> DynamicsPhase:
    return DynamicsPhase(cfg, ctx)


# ---------------------------------------------------------------------------------------- MC value


class MCValueConfig(_Updates):
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the policy's critic")
    gamma: float = Field(0.99, ge=0, le=1, description="discount of the returns-to-go (the online phase's gamma)")
    reward_scale: float = Field(0.01, gt=0, description="returns are of rewards x this; the online ppo phase must use the same reward_scale")


class MCValuePhase(PhaseBase):
    """Regress the policy's own critic on the dataset's discounted returns-to-go: the online
    critic starts from it (Uni-O4)."""

    key_metrics = ("loss_value",)

    def __init__(self, cfg: MCValueConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.opt = torch.optim.Adam(ctx.policy.critic.parameters(), lr=cfg.lr)

    def step(self, step: int, global_step: int) -> dict[str, float]:
        ds, data = _data(self.ctx, self.cfg)
        returns = torch.from_numpy(mc_returns(ds.rewards, ds.episode_index, self.cfg.gamma)) * self.cfg.reward_scale
        gen = self.ctx.generator(global_step, salt=73)
        loss = fit_value(self.ctx.policy.critic, data.obs, returns, self.cfg.updates_per_step, self.cfg.batch_size, gen, self.opt)
        return {"loss_value": loss, "return_var": float(returns.var())}

    def on_end(self) -> None:
        self.ctx.artifacts.put("mc_reward_scale", self.cfg.reward_scale)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.opt.load_state_dict(s["opt"])


@_register("mc_value", MCValueConfig, "the policy's critic regressed on the dataset's Monte-Carlo returns")
def build_mc_value(cfg: MCValueConfig, ctx) -> MCValuePhase:
    return MCValuePhase(cfg, ctx)


# ------------------------------------------------------------------------------------ ensemble BC


class Selection(Strict):
    top_k: int = Field(3, ge=1, description="members ranked best by OPE that are tried in the env (Uni-O4: 3)")
    episodes: int = Field(5, ge=0, description="real greedy episodes per tried member (0: take the OPE best)")
    ope_states: int = Field(512, ge=1, description="dataset states the OPE rollouts start from (Uni-O4: 512)")
    ope_horizon: int = Field(10, ge=1, description="model steps per OPE rollout (not fixed by the paper text)")


def _select_into_policy(ctx, cfg, ens: GaussianEnsemble, sel: Selection, scores: torch.Tensor | None = None) -> dict:
    """Choose a member as Uni-O4 does and copy it into the run's policy; returns what was measured."""
    if scores is None:
        critics = _need(ctx, cfg, "iql_critics", "iql")
        dynamics = _need(ctx, cfg, "dynamics", "dynamics")
        ope = OfflinePPO(ens, critics, dynamics, _data(ctx, cfg)[1], total_updates=0, ope_states=sel.ope_states,
                         ope_horizon=sel.ope_horizon, seed=ctx.seed)
        scores = ope.best
    e, out = select_member(ens, scores, ctx.policy, ctx.task, sel.top_k, sel.episodes, seed=20_000 + ctx.seed)
    ens.export_member(e, ctx.policy)
    out["ope_selected"] = float(scores[e])
    return out


class EnsembleBCConfig(_Updates):
    members: int = Field(4, ge=1, description="policies in the ensemble (Uni-O4: 4)")
    alpha: float = Field(0.1, ge=0, description="weight of the diversity term (Uni-O4: 0.1)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    select: bool = Field(False, description="at the end, put the best member into the policy (the BC baseline; needs iql and dynamics first)")
    selection: Selection = Field(default_factory=Selection, description="how the best member is chosen")


class EnsembleBCPhase(PhaseBase):
    key_metrics = ("nll", "diversity")

    def __init__(self, cfg: EnsembleBCConfig, ctx):
        if not ctx.policy.continuous:
            raise ConfigError(f"phase {cfg.label!r}: ensemble BC needs a Box (continuous) action space")
        self.cfg, self.ctx = cfg, ctx
        pol = ctx.policy
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            self.ens = GaussianEnsemble(cfg.members, pol.obs_dim, pol.spec["dim"], list(pol.cfg.hidden), pol.cfg.activation)
        self.opt = torch.optim.Adam(self.ens.parameters(), lr=cfg.lr)

    def step(self, step: int, global_step: int) -> dict[str, float]:
        _, data = _data(self.ctx, self.cfg)
        gen = self.ctx.generator(global_step, salt=74)
        t = time.perf_counter()
        for _ in range(self.cfg.updates_per_step):
            m = bc_step(self.ens, self.opt, data, self.cfg.batch_size, self.cfg.alpha, gen)
        m["updates_per_s"] = self.cfg.updates_per_step / (time.perf_counter() - t)
        if step + 1 == self.cfg.steps and self.cfg.select:
            m.update(_select_into_policy(self.ctx, self.cfg, self.ens, self.cfg.selection))
        return m

    def on_end(self) -> None:
        self.ctx.artifacts.put("bc_ensemble", self.ens)

    def state_dict(self) -> dict:
        return {"ens": self.ens.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.ens.load_state_dict(s["ens"])
        self.opt.load_state_dict(s["opt"])


@_register("ensemble_bc", EnsembleBCConfig, "n Gaussian BC policies with Uni-O4's diversity term")
def build_ensemble_bc(cfg: EnsembleBCConfig, ctx) -> EnsembleBCPhase:
    return EnsembleBCPhase(cfg, ctx)


# ------------------------------------------------------------------------------------ offline PPO


class OfflinePPOConfig(_Updates):
    gated: bool = Field(True, description="replace the behaviour policy when OPE improves (Uni-O4); false: one-step")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate, decayed linearly to 0 (Uni-O4: 1e-4)")
    clip: float = Field(0.25, gt=0, description="PPO ratio clip against the behaviour policy (Uni-O4: ~0.25)")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient-norm clip of each member")
    ope_every: int = Field(100, ge=1, description="updates between OPE rounds (Uni-O4: 100)")
    selection: Selection = Field(default_factory=Selection, description="how the member that goes online is chosen")


class OfflinePPOPhase(PhaseBase):
    key_metrics = ("ope_best", "accepted", "approx_kl")

    def __init__(self, cfg: OfflinePPOConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.ppo: OfflinePPO | None = None

    def _build(self) -> OfflinePPO:
        if self.ppo is None:
            c, ctx = self.cfg, self.ctx
            self.ppo = OfflinePPO(
                copy.deepcopy(_need(ctx, c, "bc_ensemble", "ensemble_bc")), _need(ctx, c, "iql_critics", "iql"),
                _need(ctx, c, "dynamics", "dynamics"), _data(ctx, c)[1], total_updates=c.steps * c.updates_per_step,
                lr=c.lr, clip=c.clip, max_grad_norm=c.max_grad_norm, batch_size=c.batch_size, gated=c.gated,
                ope_every=c.ope_every, ope_states=c.selection.ope_states, ope_horizon=c.selection.ope_horizon, seed=ctx.seed,
            )
        return self.ppo

    def step(self, step: int, global_step: int) -> dict[str, float]:
        ppo = self._build()
        gen = self.ctx.generator(global_step, salt=75)
        t = time.perf_counter()
        for _ in range(self.cfg.updates_per_step):
            m = ppo.step(gen)
        m["updates_per_s"] = self.cfg.updates_per_step / (time.perf_counter() - t)
        if step + 1 == self.cfg.steps:
            final = ppo.result()
            m.update(_select_into_policy(self.ctx, self.cfg, final, self.cfg.selection, ppo.ope(final)))
        return m

    def state_dict(self) -> dict:
        return self._build().state_dict()

    def load_state_dict(self, s: dict) -> None:
        self._build().load_state_dict(s)


@_register("offline_ppo", OfflinePPOConfig, "Uni-O4's offline multi-step PPO with OPE gating (gated: false = one-step)")
def build_offline_ppo(cfg: OfflinePPOConfig, ctx) -> OfflinePPOPhase:
    return OfflinePPOPhase(cfg, ctx)
