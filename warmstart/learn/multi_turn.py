"""Multi-turn learners: GRPO / REINFORCE-with-KL over multi-turn episodes (SCoRe's stages are two
configurations of it), and SFT on self-generated revisions (the STaR and Pair-SFT baselines).

:class:`MultiTurnPhase` reads in run order: collect (the one rollout, with the task answering each
turn) -> score (per-turn rewards from the task and the recipe) -> advantages (per turn, spread over
each turn's tokens by ``TokenBatch.turn_index``) -> update (:func:`~warmstart.learn.grpo.grpo_update`).
Per turn k of an episode (rewards r_k from the task's ``turn_rewards``)::

    R_k   = w_k * r_k  (+ alpha * (r_k - r_{k-1}) for k >= 1)       turn_weights, progress_bonus
    G_k   = R_k + gamma * G_{k+1}                                    gamma = 0: a turn earns its own reward
    A_k   = G_k - mean of G_k over the group (or batch)              [/ std with algorithm=grpo]
    token t of turn k: advantage A_k, KL coefficient beta + turn_beta[k]

``algorithm: reinforce`` is on-policy REINFORCE with a KL penalty (one pass, no clipping, mean
baseline, no std scaling), as in SCoRe. SCoRe Stage I = ``turn_weights: [0, 1]`` and a strong
``turn_beta: [beta2, 0]`` (the first attempt stays near the reference while training the second
moves the shared weights); Stage II = ``turn_weights: [1, 1]``, ``progress_bonus: alpha``.
With ``reference: shared`` on both stages, both KL terms are to the same model: the policy at the
start of Stage I (the SFT base), as in the paper, rather than each stage's own starting policy.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import MultiTurnTask, TokenPolicy
from warmstart.episode import Episode, collate, turn_reward_matrix
from warmstart.errors import ConfigError
from warmstart.functional import discounted_returns, group_advantages
from warmstart.learn.grpo import GRPOConfig, OptimizerAndReference, batch_metrics, frozen_copy, grpo_update, throughput
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.learn.supervised import sft_update
from warmstart.registry import PHASES
from warmstart.rollout import Sampling, rollout

SHARED_REFERENCE = "shared_reference"  # artifact name of SCoRe's common KL reference


class MultiTurnConfig(GRPOConfig):
    kind: str = "multi_turn"
    algorithm: Literal["reinforce", "grpo"] = Field(
        "reinforce", description="'reinforce': on-policy REINFORCE with KL (mu=1, no clipping, mean baseline); 'grpo': GRPO's clipped update and advantage scaling")
    baseline: Literal["group", "batch"] = Field("group", description="REINFORCE baseline: mean return of the episode's group, or of the batch")
    max_turns: int | None = Field(None, ge=1, description="policy turns per episode; default the task's")
    turn_weights: list[float] | None = Field(None, description="w_k: weight of turn k's reward (default 1 for every turn)")
    progress_bonus: float = Field(0.0, ge=0, description="alpha: adds alpha * (r_k - r_{k-1}) to turn k >= 1 (SCoRe Stage II: 10)")
    gamma: float = Field(0.0, ge=0, le=1, description="discount across turns: 0 = each turn's tokens earn only that turn's reward")
    turn_beta: list[float] | None = Field(None, description="extra KL coefficient per turn, added to beta (SCoRe Stage I: [beta2, 0])")
    reference: Literal["phase", "shared"] = Field(
        "phase", description="KL reference: 'phase' = the policy at the start of this phase; 'shared' = the policy at the start "
                             "of the run's first phase with reference: shared (SCoRe: the base model for Stage I and II)")


def shape_turn_rewards(raw: torch.Tensor, weights: list[float] | None = None, alpha: float = 0.0) -> torch.Tensor:
    """(B, K) R_k = w_k * r_k (+ alpha * (r_k - r_{k-1}) for k >= 1) from raw per-turn rewards r_k."""
    K = raw.shape[1]
    w = torch.ones(K)
    if weights:
        n = min(K, len(weights))
        w[:n] = torch.tensor(weights[:n], dtype=torch.float32)
    shaped = raw * w
    if alpha and K > 1:
        shaped[:, 1:] += alpha * (raw[:, 1:] - raw[:, :-1])
    return shaped


def turn_returns(shaped: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, K) G_k = R_k + gamma * G_{k+1}."""
    if gamma == 0:
        return shaped.clone()
    B, K = shaped.shape
    return discounted_returns(shaped.T, torch.zeros(K, B), gamma).T  # core works on (T, ...)


def per_turn_to_tokens(values: torch.Tensor, turn_index: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Spread (B, K) per-turn values over (B, T-1) target tokens by ``turn_index`` (``fill`` where -1)."""
    idx = turn_index.clamp(min=0).clamp(max=max(values.shape[1] - 1, 0))
    out = torch.gather(values, 1, idx) if values.shape[1] else torch.zeros_like(turn_index, dtype=torch.float32)
    return torch.where(turn_index >= 0, out, torch.full_like(out, fill))


class MultiTurnPhase(OptimizerAndReference):
    """Multi-turn REINFORCE-with-KL or GRPO with per-turn rewards, progress bonus and per-turn KL."""

    key_metrics = ("reward", "turn_reward/t1", "turn_reward/t2", "kl")

    def __init__(self, cfg: MultiTurnConfig, ctx):
        if cfg.algorithm == "reinforce":
            if cfg.mu != 1 or cfg.minibatch_size is not None:
                raise ConfigError(f"phase '{cfg.label}': algorithm 'reinforce' is on-policy (mu: 1, no minibatch_size); "
                                  "use algorithm: grpo for several passes.")
            # one on-policy pass: the ratio is 1 and clipping never binds; make that exact
            cfg = cfg.model_copy(update={"eps_low": float("inf"), "eps_high": float("inf")})
        self.cfg, self.ctx, self.policy = cfg, ctx, ctx.policy
        self.opt = make_adamw(self.policy.model.parameters(), cfg.lr, cfg.weight_decay)
        self.saves_reference = cfg.reference != "shared"  # the shared one lives in the run's artifacts

    @property
    def num_turns(self) -> int:
        return self.cfg.max_turns or self.ctx.task.max_turns

    def on_start(self, step: int) -> None:
        cfg = self.cfg
        if self.reference is None and cfg.reference == "shared":
            self.reference = self._shared_reference()
        if self.reference is None and (cfg.beta > 0 or any(b > 0 for b in (cfg.turn_beta or []))):
            self.reference = frozen_copy(self.policy.model)

    def _shared_reference(self):
        """The run's shared KL reference: the policy at the start of the first phase that asks for it,
        kept in the run's artifacts store, so a later phase (or a resumed run) gets the same model,
        not the policy it happens to start from."""
        store = self.ctx.artifacts
        if SHARED_REFERENCE in store:
            return store.get(SHARED_REFERENCE, like=frozen_copy(self.policy.model))
        ref = frozen_copy(self.policy.model)
        store.put(SHARED_REFERENCE, ref)
        return ref

    def step(self, step: int, global_step: int) -> dict:
        cfg, ctx, K = self.cfg, self.ctx, self.num_turns
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        t0 = time.time()
        # collect + score: the task answers every turn (per-turn rewards), the recipe's terms score the episode
        gen = ctx.generator(global_step)
        problems = ctx.task.sample_problems(cfg.prompts_per_step, gen)
        sampling = Sampling(cfg.max_new_tokens or ctx.task.max_new_tokens, cfg.temperature, cfg.top_p,
                            batch_size=cfg.sample_batch_size)
        episodes, stats = rollout(self.policy, problems, task=ctx.task, samples=cfg.group_size, sampling=sampling,
                                  generator=gen, rewards=ctx.rewards, max_turns=cfg.max_turns, workers=ctx.workers)
        raw = turn_reward_matrix(episodes, K)  # (B, K)
        shaped = self._shaped(episodes, raw)  # (B, K)
        for b, e in enumerate(episodes):
            e.reward = float(shaped[b].sum())  # the shaped objective, for logging and drop_uniform_groups
        metrics = batch_metrics(ctx.task, ctx.rewards, episodes)
        metrics.update({f"turn_reward/t{k + 1}": float(raw[:, k].mean()) for k in range(K)})
        if K >= 2:
            metrics["improved"] = float((raw[:, -1] > raw[:, 0]).float().mean())
            metrics["worsened"] = float((raw[:, -1] < raw[:, 0]).float().mean())
        # advantages per turn, spread over each turn's tokens
        batch = collate(episodes, self.policy.pad_id)
        adv, kl_coef = self.token_advantages(episodes, batch)
        # update
        upd = grpo_update(self.policy, self.opt, batch, adv, kl_coef, self.reference, cfg, ctx.generator(global_step, salt=1))
        metrics.update(upd)
        metrics["lr"] = self.opt.param_groups[0]["lr"]
        metrics.update(throughput(stats, upd["trained_tokens"], t0))
        return metrics

    def _shaped(self, episodes: list[Episode], raw: torch.Tensor) -> torch.Tensor:
        """(B, K) shaped turn rewards; whole-episode terms of the recipe (if any) go to the last turn."""
        shaped = shape_turn_rewards(raw, self.cfg.turn_weights, self.cfg.progress_bonus)
        shaped[:, -1] += torch.tensor([float(e.info.get("episode_reward", 0.0)) for e in episodes])
        return shaped

    def token_advantages(self, episodes: list[Episode], batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T-1) advantages and KL coefficients: per turn A_k from the turn returns, spread by turn_index."""
        cfg, K = self.cfg, self.num_turns
        G = turn_returns(self._shaped(episodes, turn_reward_matrix(episodes, K)), cfg.gamma)  # (B, K)
        if cfg.algorithm == "reinforce":
            groups = batch.groups if cfg.baseline == "group" else torch.zeros_like(batch.groups)
            scale = "none"
        else:
            groups, scale = batch.groups, cfg.advantage_scale
        adv = torch.stack([group_advantages(G[:, k], groups, scale) for k in range(K)], 1)  # (B, K)
        adv_tok = per_turn_to_tokens(adv, batch.turn_index)  # (B, T-1)
        beta = torch.full((K,), cfg.beta)
        if cfg.turn_beta:
            n = min(K, len(cfg.turn_beta))
            beta[:n] += torch.tensor(cfg.turn_beta[:n], dtype=torch.float32)
        kl_tok = per_turn_to_tokens(beta.expand(batch.groups.shape[0], K).contiguous(), batch.turn_index)
        return adv_tok, kl_tok


@PHASES.register("multi_turn", MultiTurnConfig, requires={"task": MultiTurnTask, "policy": TokenPolicy})
def make_multi_turn(cfg: MultiTurnConfig, ctx) -> MultiTurnPhase:
    """Multi-turn REINFORCE-with-KL or GRPO with per-turn rewards, bonus and KL (SCoRe's stages)."""
    return MultiTurnPhase(cfg, ctx)


# ----------------------------------------------------------------------------- STaR and Pair-SFT


class RevisionSFTConfig(PhaseConfig):
    kind: str = "revision_sft"
    source: Literal["star", "pair"] = Field(
        "star", description="'star': SFT on the policy's own successful revisions (attempt 1 wrong, last attempt right); "
                            "'pair': SFT on pairs (a wrong first attempt -> a right one) sampled from the policy")
    prompts_per_step: int = Field(32, ge=1, description="problems sampled per step")
    group_size: int = Field(8, ge=1, description="samples per problem")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    max_new_tokens: int | None = Field(None, description="per-turn limit; default the task's")
    max_pairs_per_problem: int = Field(2, ge=1, description="pair: at most this many (wrong, right) pairs per problem")
    lr: float = Field(5e-4, gt=0, description="peak learning rate")
    schedule: Schedule = Field("constant", description="learning-rate schedule after warm-up")
    warmup: int = Field(0, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    sample_batch_size: int | None = Field(None, description="sequences per sampling call; default all at once")


def revision_episode(policy, prompt: str, prompt_ids: list[int], context_ids: list[int], target_ids: list[int],
                     text: str = "") -> Episode:
    """An SFT episode whose loss covers only the revision ``target_ids``; ``context_ids`` (earlier
    attempts and instructions) are environment tokens."""
    e = Episode(prompt=prompt, prompt_ids=list(prompt_ids))
    e.add_env(list(context_ids))
    e.add_turn(list(target_ids), [0.0] * len(target_ids), text)
    return e


class RevisionSFTPhase(OptimizerPhase):
    """Online SFT on revisions the policy itself produced: STaR (filter two-turn episodes for
    successful revisions) or Pair-SFT (pair a wrong and a right first attempt of the same problem
    as attempt 1 -> attempt 2). Same sampling budget per step as the RL phases."""

    key_metrics = ("loss", "kept")

    def __init__(self, cfg: RevisionSFTConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.policy, self.model = ctx.policy, ctx.policy.model
        self.opt = make_adamw(self.model.parameters(), cfg.lr, cfg.weight_decay)

    def _sampling(self) -> Sampling:
        cfg = self.cfg
        return Sampling(cfg.max_new_tokens or self.ctx.task.max_new_tokens, cfg.temperature, batch_size=cfg.sample_batch_size)

    def _star(self, problems, gen) -> tuple[list[Episode], dict]:
        cfg = self.cfg
        eps, stats = rollout(self.policy, problems, task=self.ctx.task, samples=cfg.group_size, sampling=self._sampling(),
                             generator=gen, workers=self.ctx.workers)
        out = []
        for e in eps:
            r = [t.get("correct", 0.0) for t in e.turn_rewards]
            if len(r) >= 2 and r[0] < 1 and r[-1] >= 1:
                s0, s1 = e.turns[-1]
                out.append(revision_episode(self.policy, e.prompt, e.prompt_ids, e.ids[:s0], e.ids[s0:s1], e.turn_texts[-1]))
        return out, stats

    def _pair(self, problems, gen) -> tuple[list[Episode], dict]:
        cfg, task = self.cfg, self.ctx.task
        eps, stats = rollout(self.policy, problems, task=task, samples=cfg.group_size, sampling=self._sampling(),
                             generator=gen, max_turns=1, workers=self.ctx.workers)
        by_group: dict[int, list[Episode]] = {}
        for e in eps:
            by_group.setdefault(e.group, []).append(e)
        out = []
        for group in by_group.values():
            wrong = [e for e in group if e.turn_rewards[0].get("correct", 0.0) < 1]
            right = [e for e in group if e.turn_rewards[0].get("correct", 0.0) >= 1]
            for w, r in list(zip(wrong, right))[: cfg.max_pairs_per_problem]:
                msg = task.respond(w, 0).message or ""
                ctx_ids = w.ids + self.policy.encode(msg)
                out.append(revision_episode(self.policy, w.prompt, w.prompt_ids, ctx_ids, r.ids, r.turn_texts[0]))
        return out, stats

    def step(self, step: int, global_step: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        t0 = time.time()
        gen = ctx.generator(global_step)
        problems = ctx.task.sample_problems(cfg.prompts_per_step, gen)
        train, stats = (self._star if cfg.source == "star" else self._pair)(problems, gen)
        metrics = {"kept": len(train) / (cfg.prompts_per_step * cfg.group_size)}
        if train:
            out = sft_update(self.policy, self.opt, train, cfg.max_grad_norm)
            metrics.update({"loss": out["loss"], "grad_norm": out["grad_norm"]})
        metrics.update({"lr": self.opt.param_groups[0]["lr"], "sample_tokens_per_s": stats["sample_tokens_per_s"],
                        "tokens_per_s": stats["sampled_tokens"] / max(time.time() - t0, 1e-9)})
        return metrics


@PHASES.register("revision_sft", RevisionSFTConfig, requires={"task": MultiTurnTask, "policy": TokenPolicy})
def make_revision_sft(cfg: RevisionSFTConfig, ctx) -> RevisionSFTPhase:
    """SFT on self-generated revisions: STaR (successful revisions) or Pair-SFT (wrong -> right pairs)."""
    return RevisionSFTPhase(cfg, ctx)
