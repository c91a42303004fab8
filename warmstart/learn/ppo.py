"""PPO for vector policies on Gymnasium tasks (``kind: ppo``), and PDPPO (``kind: pdppo``).

Read top to bottom, in the order it runs: config -> rollout -> advantages -> update -> the phase.
One engine step is one PPO *iteration*: ``num_steps`` steps of ``num_envs`` envs, then
``update_epochs`` passes over the batch in ``num_minibatches`` minibatches. So a phase of
``steps: S`` sees ``S * num_envs * num_steps`` env steps.

Implementation details follow CleanRL's ``ppo.py`` (orthogonal init and separate actor/critic in
:mod:`warmstart.policies.mlp`; Adam eps 1e-5; linear LR annealing; GAE; shuffled minibatches;
per-minibatch advantage normalisation; clipped value loss; entropy bonus; global gradient-norm
clipping; optional early stop on ``target_kl``), with two deliberate differences: time-limit
truncations bootstrap from the value of the final observation (as SB3 does; CleanRL treats them
as terminations), and observation statistics live in the policy (so a saved policy carries them).
The math (GAE, clipped surrogate, value loss, KL estimate) is :mod:`warmstart.functional`'s.

**PDPPO** (Felizardo et al., METHODS.md G): ``critic: dual`` (the default of ``kind: pdppo``) adds a
critic V_post on the post-decision state s^x_t that the env reports in
``info["post_decision_state"]``. Every rollout step gets the combined value
``b_t = min(V(s_t), V_post(s^x_t))`` (``combine: mean`` averages instead); GAE runs over ``b`` (the
bootstrap after the last step, or after a truncation, uses V(s) alone since no action -- hence no
post-decision state -- exists there yet), so ``A_t = G^lambda_t - b_t``, and *both* critics regress
on the same lambda-return ``G^lambda_t = A_t + b_t``, each with its own clipped value loss.

**The paper's targets** are options beside these defaults (``recipes/*-lotsizing-paper.yaml``):
``targets: mc`` (Monte-Carlo discounted returns of the rollout normalised over the batch, no GAE,
``A = G - b``), ``critic_target: combined`` (one value loss on ``b = min(V, V_post)``),
``weight_decay`` (Adam's) and ``keep_best`` (the weights of the best training rollout are the
phase's result); with ``num_minibatches: 1, update_epochs: 60`` and no annealing, normalisation or
value clipping this is the update of the authors' code.
"""

from __future__ import annotations

import pickle
import time
from collections import deque
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import ActorCriticPolicy, EnvTask, PhaseBase
from warmstart.episode import Transitions
from warmstart.errors import ConfigError
from warmstart.functional import (
    approx_kl,
    clip_fraction,
    clipped_surrogate,
    discounted_returns,
    explained_variance,
    gae,
    normalize,
    value_loss,
)
from warmstart.learn.optim import guarded_step
from warmstart.policies.mlp import RunningMeanStd
from warmstart.registry import PHASES

POST_KEY = "post_decision_state"


# ----------------------------------------------------------------------------------------- config


class PPOConfig(PhaseConfig):
    """One engine step = one rollout of ``num_envs * num_steps`` env steps + the update epochs."""

    num_envs: int = Field(4, ge=1, description="parallel envs")
    num_steps: int = Field(128, ge=1, description="steps per env per iteration (rollout length)")
    lr: float = Field(2.5e-4, gt=0, description="Adam learning rate of the actor (and the critics unless critic_lr is set)")
    critic_lr: float | None = Field(None, gt=0, description="separate learning rate for the critic(s); default: lr")
    anneal_lr: bool = Field(True, description="decay learning rates linearly to 0 over the phase's steps")
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon (1e-5 as in CleanRL/OpenAI baselines)")
    gamma: float = Field(0.99, ge=0, le=1, description="discount factor")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    num_minibatches: int = Field(4, ge=1, description="minibatches per epoch (minibatch = num_envs*num_steps/num_minibatches)")
    update_epochs: int = Field(4, ge=1, description="passes over each rollout (PDPPO paper: K = 60)")
    norm_adv: bool = Field(True, description="normalise advantages per minibatch")
    clip_coef: float = Field(0.2, gt=0, description="PPO ratio clip epsilon")
    clip_vloss: bool = Field(True, description="clip the value loss around the rollout's values (by clip_coef)")
    ent_coef: float = Field(0.01, ge=0, description="entropy bonus coefficient")
    vf_coef: float = Field(0.5, ge=0, description="value loss coefficient (applies to each critic)")
    max_grad_norm: float = Field(0.5, gt=0, description="global gradient-norm clip over all parameters")
    target_kl: float | None = Field(None, gt=0, description="stop the epochs early once approx_kl exceeds this")
    normalize_reward: bool = Field(
        False, description="scale rewards by a running std of the discounted return (Gymnasium's NormalizeReward)"
    )
    reward_clip: float = Field(10.0, gt=0, description="clip normalised rewards to [-reward_clip, reward_clip]")
    reward_scale: float = Field(
        1.0, gt=0, description="multiply env rewards by this constant (Uni-O4: the scale its offline critic was trained at)"
    )
    freeze_obs_norm: bool = Field(
        False, description="keep the policy's observation statistics fixed (Uni-O4: the offline dataset's)"
    )
    critic: Literal["single", "dual"] = Field(
        "single", description="'dual': PDPPO's second critic on post-decision states (needs post_critic: true in the policy)"
    )
    combine: Literal["min", "mean"] = Field("min", description="how the dual critics combine into the baseline (PDPPO: min)")
    targets: Literal["gae", "mc"] = Field(
        "gae",
        description="'gae': GAE(lambda) advantages and lambda-returns; 'mc' (the PDPPO paper's): Monte-Carlo "
        "discounted returns G of the rollout, cut at episode ends and at the rollout's end (no bootstrap; "
        "make num_steps a multiple of the episode length), normalised to zero mean and unit std over the "
        "batch; A = G - baseline (the rollout's V(s), or the combined dual value)",
    )
    critic_target: Literal["each", "combined"] = Field(
        "each",
        description="dual critics: 'each' regresses V and V_post on the return separately; 'combined' "
        "regresses the combined value (min(V, V_post)), so only the critic giving the min learns on a "
        "sample (the PDPPO paper's value loss)",
    )
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 weight decay on all networks (PDPPO paper: 1e-3)")
    keep_best: bool = Field(
        False,
        description="at the end of the phase, restore the weights whose rollout had the best mean episode "
        "return (the PDPPO paper tests its best checkpoint); evaluation then tests those weights",
    )
    env_seed: int | None = Field(None, description="seed of the training envs (default: the recipe seed)")
    return_window: int = Field(20, ge=1, description="episodic_return is the mean over the last N finished episodes")


class PDPPOConfig(PPOConfig):
    """PPO with PDPPO's dual critics on by default, and the paper's entropy coefficient and learning
    rates (actor 5.5e-4, critics 1e-3)."""

    critic: Literal["single", "dual"] = Field("dual", description="'dual': the post-decision critic (PDPPO)")
    ent_coef: float = Field(0.012, ge=0, description="entropy bonus coefficient (paper: 0.012)")
    lr: float = Field(5.5e-4, gt=0, description="actor learning rate (paper: 5.5e-4)")
    critic_lr: float | None = Field(1e-3, gt=0, description="critic learning rate (paper: 1e-3)")


# ---------------------------------------------------------------------------------------- rollout


class RewardScaler:
    """Divides rewards by the running std of each env's discounted return (no centring), as
    Gymnasium's ``NormalizeReward`` and SB3's ``VecNormalize`` do."""

    def __init__(self, num_envs: int, gamma: float, clip: float):
        self.rms = RunningMeanStd(())
        self.ret = np.zeros(num_envs)
        self.gamma, self.clip = gamma, clip

    def __call__(self, rew: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + rew
        self.rms.update(torch.from_numpy(self.ret))
        self.ret[done] = 0.0
        return np.clip(rew / np.sqrt(self.rms.var.item() + 1e-8), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "ret": self.ret.copy()}

    def load_state_dict(self, s: dict) -> None:
        self.rms.load_state_dict(s["rms"])
        self.ret = s["ret"].copy()


@torch.no_grad()
def collect(policy, envs, next_obs: torch.Tensor, cfg: PPOConfig, scaler: RewardScaler | None, finished):
    """Run ``cfg.num_steps`` steps of every env. Returns the rollout as :class:`Transitions` (obs
    stored as the network saw them, i.e. normalised) and the raw observation to continue from; the
    returns of the episodes that end are appended to ``finished`` (a list or deque).

    ``extra`` holds ``next_values`` (T, N): the value of the state reached after each step (for a
    truncation: of the final observation), and for the dual critic ``post_obs`` / ``post_values``.
    """
    T, N, D = cfg.num_steps, envs.num_envs, next_obs.shape[-1]
    dual = cfg.critic == "dual"
    obs = torch.zeros((T, N, D))
    actions = None
    logprobs, rewards, values = torch.zeros((T, N)), torch.zeros((T, N)), torch.zeros((T + 1, N))
    terminated, truncated = torch.zeros((T, N)), torch.zeros((T, N))
    post_obs, post_values = (torch.zeros((T, N, D)), torch.zeros((T, N))) if dual else (None, None)
    final_values = {}  # t -> (env indices, V(final obs)) for truncations
    for t in range(T):
        if policy.cfg.normalize_obs and not cfg.freeze_obs_norm:
            policy.obs_rms.update(next_obs)
        x = policy.normalize_obs(next_obs)  # (N, D)
        a, logp = policy.sample(x)
        obs[t], logprobs[t], values[t] = x, logp, policy.value(x)
        if actions is None:
            actions = torch.zeros((T, *a.shape), dtype=a.dtype)
        actions[t] = a
        o, r, te, tr, info = envs.step(a.numpy())
        if dual:
            if POST_KEY not in info:
                raise ConfigError(
                    f"critic: dual needs an env that reports info[{POST_KEY!r}] (e.g. warmstart/LotSizing-v0)"
                )
            px = policy.normalize_obs(torch.from_numpy(info[POST_KEY]))
            post_obs[t], post_values[t] = px, policy.post_value(px)
        done = te | tr
        if cfg.reward_scale != 1.0:
            r = r * cfg.reward_scale
        if scaler is not None:
            r = scaler(r, done)
        rewards[t] = torch.from_numpy(r)
        terminated[t], truncated[t] = torch.from_numpy(te), torch.from_numpy(tr)
        if info["episode_return"] is not None:
            finished.extend(info["episode_return"][done].tolist())
        if tr.any():
            idx = np.nonzero(tr)[0]
            final_values[t] = (torch.from_numpy(idx), policy.value(policy.normalize_obs(torch.from_numpy(info["final_obs"][idx]))))
        next_obs = torch.from_numpy(o)
    values[T] = policy.value(policy.normalize_obs(next_obs))
    next_values = values[1:].clone()
    if dual:
        # the combined, action-dependent value of each step; bootstraps after the last step stay V(s)
        combined = _combine(values[:T], post_values, cfg.combine)
        next_values[: T - 1] = combined[1:]
    for t, (idx, v) in final_values.items():
        next_values[t, idx] = v
    roll = Transitions(
        obs=obs, actions=actions, logprobs=logprobs, rewards=rewards, terminated=terminated,
        truncated=truncated, values=values[:T], last_obs=next_obs,
        extra={"next_values": next_values},
    )
    if dual:
        roll.extra.update(post_obs=post_obs, post_values=post_values, state_values=values[:T])
        roll.values = combined
    return roll, next_obs


def _combine(v: torch.Tensor, v_post: torch.Tensor, how: str) -> torch.Tensor:
    return torch.minimum(v, v_post) if how == "min" else 0.5 * (v + v_post)


# ------------------------------------------------------------------------------------- advantages


def advantages(roll: Transitions, cfg: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the rollout (``targets: gae``) or the paper's normalised Monte-Carlo returns
    (``targets: mc``); returns (advantages, returns), each (T, N)."""
    ended = torch.clamp(roll.terminated + roll.truncated, max=1.0)  # (T, N)
    if cfg.targets == "mc":
        ret = normalize(discounted_returns(roll.rewards, ended, cfg.gamma))  # (T, N), over the whole batch
        return ret - roll.values, ret
    return gae(
        roll.rewards, roll.values, roll.extra["next_values"],
        next_nonterminal=1.0 - roll.terminated, episode_continues=1.0 - ended,
        gamma=cfg.gamma, lam=cfg.gae_lambda,
    )


# ----------------------------------------------------------------------------------------- update


def update(policy, optimizer, roll: Transitions, adv: torch.Tensor, ret: torch.Tensor, cfg: PPOConfig) -> dict:
    """``update_epochs`` passes of clipped-PPO minibatch updates; returns the debug metrics."""
    dual = cfg.critic == "dual"
    combined = dual and cfg.critic_target == "combined"  # one loss on min(V, V_post), as the paper
    B = roll.rewards.numel()
    b_obs = roll.obs.reshape(B, -1)
    b_act = roll.actions.reshape(B, *roll.actions.shape[2:])
    b_logp, b_adv, b_ret = roll.logprobs.reshape(B), adv.reshape(B), ret.reshape(B)
    b_val = (roll.extra["state_values"] if dual and not combined else roll.values).reshape(B)
    if dual:
        b_post, b_pval = roll.extra["post_obs"].reshape(B, -1), roll.extra["post_values"].reshape(B)
    mb_size = max(1, B // cfg.num_minibatches)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    clip = cfg.clip_coef if cfg.clip_vloss else None
    seen_idx, seen_logp, terms = [], [], []  # for the debug metrics, computed once at the end
    skipped = 0  # minibatches whose loss or gradient was non-finite (no step taken)
    for _epoch in range(cfg.update_epochs):
        # one minibatch: the order does not matter, so skip the shuffle and the copies
        perm = torch.randperm(B) if mb_size < B else torch.arange(B)
        for start in range(0, B - mb_size + 1, mb_size):
            mb = perm[start : start + mb_size]
            x = b_obs[mb]
            logp, ent = policy.evaluate_actions(x, b_act[mb], entropy_grad=cfg.ent_coef > 0)
            mb_adv = normalize(b_adv[mb]) if cfg.norm_adv and mb_size > 1 else b_adv[mb]
            pg = clipped_surrogate(logp, b_logp[mb], mb_adv, cfg.clip_coef)[0].mean()
            v = policy.value(x)  # (mb,)
            if combined:
                v = _combine(v, policy.post_value(b_post[mb]), cfg.combine)
            v_loss = value_loss(v, b_ret[mb], b_val[mb], clip).mean()
            ent = ent.mean()
            loss = pg - cfg.ent_coef * ent + cfg.vf_coef * v_loss
            if dual and not combined:
                vp_loss = value_loss(policy.post_value(b_post[mb]), b_ret[mb], b_pval[mb], clip).mean()
                loss = loss + cfg.vf_coef * vp_loss
            optimizer.zero_grad(set_to_none=False)  # in place: the flat gradient buffers stay linked
            loss.backward()
            if guarded_step(optimizer, params, cfg.max_grad_norm, float(loss.detach()))[1]:
                skipped += 1
                continue
            seen_idx.append(mb)
            seen_logp.append(logp.detach())
            terms.append([pg.detach(), v_loss.detach(), ent.detach()] + ([vp_loss.detach()] if dual and not combined else []))
        if cfg.target_kl is not None and float(approx_kl(logp.detach(), b_logp[mb]).mean()) > cfg.target_kl:
            break
    if not seen_logp:  # every minibatch was non-finite: nothing to report but the skips
        return {"updates": 0, "skipped_updates": skipped, "loss_policy": float("nan"), "loss_value": float("nan")}
    with torch.no_grad():
        new_logp = torch.stack(seen_logp)  # (updates, mb)
        old_logp = b_logp[torch.stack(seen_idx)]
        # approx_kl and clipfrac have one definition each across learners (warmstart.functional)
        kl = approx_kl(new_logp, old_logp).mean(-1)  # (updates,)
        clipfrac = clip_fraction((new_logp - old_logp).exp(), cfg.clip_coef).mean()
        t = torch.tensor([[float(v) for v in row] for row in terms]).mean(0)
    out = {"loss_policy": float(t[0]), "loss_value": float(t[1]), "entropy": float(t[2])}
    if dual and not combined:
        out["loss_value_post"] = float(t[3])
    out["approx_kl"] = float(kl[-1])  # of the last minibatch, as CleanRL logs it
    out["clipfrac"] = float(clipfrac)
    out["explained_variance"] = explained_variance(roll.values.reshape(B), b_ret)
    out["updates"], out["skipped_updates"] = len(seen_logp), skipped
    return out


# ------------------------------------------------------------------------------------------ phase


def flat_parameter(params: list[torch.nn.Parameter]) -> torch.nn.Parameter:
    """One contiguous parameter holding ``params``; each of them (and its gradient) becomes a view
    into it. Adam and the global grad-norm clip then cost one kernel for a whole network instead of
    a Python loop over a dozen small tensors -- on CPU with small MLPs that loop costs more than the
    math. Values, gradients and ``state_dict`` of the network are unchanged."""
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    link_flat(params, flat)
    return flat


def link_flat(params: list[torch.nn.Parameter], flat: torch.nn.Parameter) -> None:
    """(Re)make ``params`` and their ``.grad`` views of ``flat`` and its gradient buffer."""
    off = 0
    for p in params:
        n = p.numel()
        if p.data.data_ptr() != flat.data[off:].data_ptr():
            flat.data[off : off + n].copy_(p.data.reshape(-1))
            p.data = flat.data[off : off + n].view_as(p)
        if p.grad is None or p.grad.data_ptr() != flat.grad[off:].data_ptr():
            p.grad = flat.grad[off : off + n].view_as(p)
        off += n


class PPOPhase(PhaseBase):
    """The engine-facing learner: owns the envs, the optimizer and the reward scaler; its
    ``state_dict`` pickles the envs (their RNGs and episode progress) so a resume is exact."""

    def __init__(self, cfg: PPOConfig, ctx):
        self.cfg, self.ctx, self.policy, self.task = cfg, ctx, ctx.policy, ctx.task
        if cfg.critic == "dual" and self.policy.post_critic is None:
            raise ConfigError(
                f"phase {cfg.label!r}: critic: dual needs the policy's post-decision critic; set policy.post_critic: true"
            )
        seed = ctx.seed if cfg.env_seed is None else cfg.env_seed
        info_keys = (POST_KEY,) if cfg.critic == "dual" else ()
        self.envs, first_obs = self.task.make_envs(cfg.num_envs, seed=seed, info_keys=info_keys)
        self.next_obs = torch.from_numpy(first_obs)
        actor = [p for n, p in self.policy.named_parameters() if not n.startswith(("critic.", "post_critic."))]
        critics = [p for n, p in self.policy.named_parameters() if n.startswith(("critic.", "post_critic."))]
        if cfg.critic == "single" and self.policy.post_critic is not None:
            critics = [p for n, p in self.policy.named_parameters() if n.startswith("critic.")]
        self._groups = [actor, critics]
        self._flat = [flat_parameter(actor), flat_parameter(critics)]
        self.optimizer = torch.optim.Adam(
            [{"params": [self._flat[0]], "lr": cfg.lr, "base_lr": cfg.lr},
             {"params": [self._flat[1]], "lr": cfg.critic_lr or cfg.lr, "base_lr": cfg.critic_lr or cfg.lr}],
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            fused=True,
        )
        self.scaler = RewardScaler(cfg.num_envs, cfg.gamma, cfg.reward_clip) if cfg.normalize_reward else None
        self.finished: deque = deque(maxlen=cfg.return_window)
        self.best_return, self.best_state = -float("inf"), None  # keep_best

    key_metrics = ("episodic_return", "approx_kl", "explained_variance", "sps")

    def on_start(self, step: int) -> None:
        self.policy.train()

    def step(self, step: int, global_step: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.anneal_lr:
            frac = 1.0 - step / max(cfg.steps, 1)
            for g in self.optimizer.param_groups:
                g["lr"] = frac * g["base_lr"]
        for params, flat in zip(self._groups, self._flat):
            link_flat(params, flat)  # cheap; repairs the views if anyone replaced a .grad meanwhile
        new: list[float] = []  # returns of the episodes that end in this rollout
        roll, self.next_obs = collect(self.policy, self.envs, self.next_obs, cfg, self.scaler, new)
        self.finished.extend(new)
        if cfg.keep_best and new and float(np.mean(new)) > self.best_return:
            # the weights that collected this rollout, i.e. before this iteration's update
            self.best_return = float(np.mean(new))
            self.best_state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        t1 = time.perf_counter()
        adv, ret = advantages(roll, cfg)
        metrics = update(self.policy, self.optimizer, roll, adv, ret, cfg)
        t2 = time.perf_counter()
        n = roll.num_steps
        metrics.update(
            episodic_return=float(np.mean(self.finished)) if self.finished else float("nan"),
            episodes=len(self.finished),
            env_steps=(step + 1) * n,
            lr=self.optimizer.param_groups[0]["lr"],
            **({"best_return": self.best_return} if cfg.keep_best else {}),
            sps=n / (t2 - t0),
            time_rollout_s=t1 - t0,
            time_update_s=t2 - t1,
        )
        return metrics

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "envs": pickle.dumps(self.envs),
            "next_obs": self.next_obs.clone(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "finished": list(self.finished),
            "best": (self.best_return, self.best_state),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.envs = pickle.loads(state["envs"])
        self.next_obs = state["next_obs"].clone()
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.finished = deque(state["finished"], maxlen=self.cfg.return_window)
        self.best_return, self.best_state = state.get("best", (-float("inf"), None))

    def on_end(self) -> None:
        self.envs.close()
        if self.cfg.keep_best and self.best_state is not None:
            self.policy.load_state_dict(self.best_state)  # in place: the flat parameter views stay linked


@PHASES.register("ppo", PPOConfig, "PPO for MLP policies on Gymnasium tasks (critic: dual for PDPPO)",
                 requires={"task": EnvTask, "policy": ActorCriticPolicy})
def build_ppo(cfg: PPOConfig, ctx) -> PPOPhase:
    return PPOPhase(cfg, ctx)


@PHASES.register("pdppo", PDPPOConfig, "PDPPO: PPO with a second critic on post-decision states",
                 requires={"task": EnvTask, "policy": ActorCriticPolicy})
def build_pdppo(cfg: PDPPOConfig, ctx) -> PPOPhase:
    return PPOPhase(cfg, ctx)
