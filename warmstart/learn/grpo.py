"""GRPO: group-relative policy optimisation, read top to bottom.

One step = collect (sample G completions for each of ``prompts_per_step`` problems) -> score (the
recipe's reward terms) -> advantages (each group's rewards centred, optionally scaled, on every
action token) -> update (:func:`grpo_update`: ``mu`` passes of clipped-ratio updates over
minibatches, with an optional KL penalty to a frozen reference). Variants from the literature are
options, not forks: clip-higher (``eps_high``), token-level aggregation (DAPO), constant
normalisation (Dr. GRPO), dropping groups whose rewards are all equal (DAPO's dynamic sampling), no
std scaling (Dr. GRPO).

:func:`grpo_update` is one function of ``(policy, optimizer, batch, per-token advantages, per-token
KL coefficients, reference, config)``: the multi-turn learner (SCoRe and its baselines) and GRPO on
search groups are flat phases that fill those tensors their own way and call it.
"""

from __future__ import annotations

import copy
import time

import torch
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import PhaseBase, SingleTurnTask, TokenPolicy
from warmstart.episode import Episode, TokenBatch, collate, length_buckets
from warmstart.errors import ConfigError
from warmstart.functional import (
    AdvantageScale,
    KLEstimator,
    LossAggregation,
    aggregate_loss,
    approx_kl,
    clip_fraction,
    clipped_surrogate,
    group_advantages,
    group_has_signal,
    kl_estimate,
    masked_mean,
    token_logprobs,
)
from warmstart.learn.optim import Schedule, guarded_step, lr_at, make_adamw, set_lr
from warmstart.registry import PHASES
from warmstart.rollout import Sampling, rollout


class GRPOConfig(PhaseConfig):
    kind: str = "grpo"
    prompts_per_step: int = Field(32, ge=1, description="problems sampled per step")
    group_size: int = Field(8, ge=1, description="G: completions per problem")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (log-probs are taken at the same temperature)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int | None = Field(None, description="completion limit; default the task's")
    lr: float = Field(5e-4, gt=0, description="peak learning rate")
    schedule: Schedule = Field("constant", description="learning-rate schedule after warm-up")
    warmup: int = Field(0, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    mu: int = Field(1, ge=1, description="passes over each batch (mu > 1 makes the clipped ratio matter)")
    minibatch_size: int | None = Field(None, description="sequences per optimizer step; default the whole batch")
    eps_low: float = Field(0.2, ge=0, description="lower clip: ratio >= 1 - eps_low")
    eps_high: float = Field(0.2, ge=0, description="upper clip: ratio <= 1 + eps_high (DAPO clip-higher uses 0.28)")
    advantage_scale: AdvantageScale = Field("group", description="divide centred rewards by the group std, the batch std, or nothing")
    loss_aggregation: LossAggregation = Field("token", description="'sequence' (GRPO), 'token' (DAPO) or 'constant' (Dr. GRPO)")
    beta: float = Field(0.0, ge=0, description="KL coefficient to the frozen reference (policy at the start of this phase)")
    kl_estimator: KLEstimator = Field("k3", description="KL estimator for the penalty")
    drop_uniform_groups: bool = Field(False, description="drop groups whose rewards are all equal (no signal)")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    max_buckets: int = Field(4, ge=1, description="split each minibatch into at most this many length buckets (less padding, same gradient)")
    sample_batch_size: int | None = Field(None, description="sequences per sampling call; default all at once")


def policy_gradient_loss(
    policy,
    batch: TokenBatch,
    advantages: torch.Tensor,
    cfg: GRPOConfig,
    kl_coef: torch.Tensor | float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    num_seqs: float | None = None,
    num_tokens: float | None = None,
) -> dict[str, torch.Tensor]:
    """Clipped policy-gradient loss with an optional KL penalty, over the action tokens of ``batch``.

    ``advantages`` and ``kl_coef`` are per target token, (B, T-1) (or broadcastable), so each turn of
    a multi-turn episode may carry its own. ``num_seqs``/``num_tokens`` are whole-batch normalisers
    when ``batch`` is one micro-batch (see :func:`aggregate_loss`). Returns named terms: ``loss`` (what is minimised),
    ``loss_policy``, ``loss_kl``, ``kl``, ``entropy``, ``clipfrac``, ``approx_kl``, ``ratio``.
    """
    mask = batch.action_mask
    kw = {"images": batch.images} if batch.images is not None else {}
    lp, ent = policy.forward_logprobs(batch.input_ids, batch.attention_mask, cfg.temperature, with_entropy=True,
                                      action_mask=mask, **kw)  # (B, T-1): only action positions are scored
    pg, ratio, clipped = clipped_surrogate(lp, batch.old_logprobs, advantages, cfg.eps_low, cfg.eps_high)
    const = cfg.max_new_tokens or mask.shape[1]
    loss_policy = aggregate_loss(pg, mask, cfg.loss_aggregation, const, num_seqs, num_tokens)
    out = {"loss_policy": loss_policy}
    loss = loss_policy
    if ref_logprobs is not None:
        kl_tok = kl_estimate(lp, ref_logprobs, cfg.kl_estimator)
        weighted = kl_tok * kl_coef
        loss_kl = aggregate_loss(weighted, mask, cfg.loss_aggregation, const, num_seqs, num_tokens)
        loss = loss + loss_kl
        out["loss_kl"] = loss_kl
        out["kl"] = masked_mean(kl_tok.detach(), mask)
    out["loss"] = loss
    with torch.no_grad():
        out["entropy"] = masked_mean(ent, mask)
        out["clipfrac"] = masked_mean(clip_fraction(ratio.detach(), cfg.eps_low, cfg.eps_high), mask)
        out["clip_active"] = masked_mean(clipped.float(), mask)
        out["approx_kl"] = masked_mean(approx_kl(lp.detach(), batch.old_logprobs), mask)
        out["ratio"] = masked_mean(ratio.detach(), mask)
    return out


def frozen_copy(model):
    """A frozen reference: a copy of ``model`` in eval mode with no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def reference_logprobs(ref_model, batch: TokenBatch, temperature: float, policy=None) -> torch.Tensor:
    """Log-probs (B, T-1) of the batch under the frozen reference. A batch with images needs the
    policy's own forward (its processor and image placement), run with the reference's weights."""
    dev = next(ref_model.parameters()).device  # a GPU policy's reference: CPU batch in, CPU log-probs out
    with torch.no_grad():
        if batch.images is not None:
            logits = policy.logits(batch.input_ids, batch.attention_mask, batch.images, model=ref_model)[:, :-1]
        else:
            logits = ref_model(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev)).logits[:, :-1]
        return token_logprobs(logits, batch.input_ids[:, 1:].to(dev), temperature).to(batch.input_ids.device)


def grpo_update(policy, optimizer, batch: TokenBatch, advantages: torch.Tensor, kl_coef: torch.Tensor,
                reference, cfg: GRPOConfig, generator: torch.Generator | None = None) -> dict[str, float]:
    """The GRPO update: ``cfg.mu`` passes of clipped policy-gradient minibatch steps over ``batch``.

    ``advantages`` and ``kl_coef`` are (B, T-1), one value per target token (single-turn GRPO puts
    the group advantage on every action token; multi-turn learners fill them per turn). ``reference``
    is the frozen KL reference model (None: no KL term). Rows of groups without signal are dropped
    first when ``cfg.drop_uniform_groups``. Each minibatch runs as length-bucketed micro-batches whose
    losses are normalised by whole-minibatch counts, so the gradient equals the unsplit one.
    Returns the named metrics, averaged over optimizer steps (``loss*``) or over tokens (the rest).
    A minibatch whose loss or gradient is non-finite is skipped (see :func:`guarded_step`) and
    counted in ``skipped_updates``.
    """
    keep = group_has_signal(batch.rewards, batch.groups) if cfg.drop_uniform_groups else torch.ones(len(batch.rewards), dtype=torch.bool)
    metrics: dict[str, float] = {"groups_with_signal": float(group_has_signal(batch.rewards, batch.groups).float().mean())}
    idx_all = keep.nonzero().squeeze(1)
    model = policy.model
    t_train = time.time()
    agg: dict[str, float] = {}
    mb_terms: dict[str, float] = {}
    n_updates = n_skipped = 0
    if len(idx_all) > 0:
        model.train()
        mb = cfg.minibatch_size or len(idx_all)
        for _ in range(cfg.mu):
            perm = idx_all[torch.randperm(len(idx_all), generator=generator)] if mb < len(idx_all) else idx_all
            for s in range(0, len(perm), mb):
                ids = perm[s : s + mb]
                optimizer.zero_grad(set_to_none=True)
                # whole-minibatch normalisers, so the length buckets' losses sum to its loss
                am = batch.action_mask[ids]
                n_seqs = float((am.sum(1) > 0).sum().clamp(min=1))
                n_tok = float(am.sum().clamp(min=1))
                lengths = batch.attention_mask[ids].sum(1).tolist()
                for bucket in length_buckets(lengths, cfg.max_buckets):
                    sub_ids = ids[bucket]
                    sub = _select(batch, sub_ids)
                    ref_lp = reference_logprobs(reference, sub, cfg.temperature, policy) if reference is not None else None
                    Tm = sub.old_logprobs.shape[1]
                    terms = policy_gradient_loss(policy, sub, advantages[sub_ids, :Tm], cfg, kl_coef[sub_ids, :Tm], ref_lp,
                                                 num_seqs=n_seqs, num_tokens=n_tok)
                    terms["loss"].backward()
                    share = float(sub.action_mask.sum()) / n_tok  # token share, for the debug means
                    for k, v in terms.items():
                        v = float(v.detach())
                        mb_terms[k] = mb_terms.get(k, 0.0) + (v if k.startswith("loss") else v * share)
                gnorm, skipped = guarded_step(optimizer, model.parameters(), cfg.max_grad_norm, mb_terms.get("loss"))
                if skipped:  # a non-finite minibatch is left out of the means too
                    n_skipped += 1
                    mb_terms.clear()
                    continue
                n_updates += 1
                mb_terms["grad_norm"] = gnorm
                for k, v in mb_terms.items():
                    agg[k] = agg.get(k, 0.0) + v
                mb_terms.clear()
    for k, v in agg.items():
        metrics[k] = v / max(n_updates, 1)
    trained_tokens = int(batch.attention_mask[idx_all].sum()) * cfg.mu if len(idx_all) else 0
    metrics.update({"updates": n_updates, "skipped_updates": n_skipped, "trained_tokens": trained_tokens,
                    "train_tokens_per_s": trained_tokens / max(time.time() - t_train, 1e-9)})
    return metrics


def batch_metrics(task, rewards, episodes: list[Episode]) -> dict[str, float]:
    """What every token learner logs about its episodes: reward terms, accuracy and task shares
    (for tasks with a verifier), mean completion length."""
    metrics = rewards.metrics(episodes) if rewards is not None else {}
    if isinstance(task, SingleTurnTask):
        metrics["accuracy"] = sum(task.is_correct(e.text, e.info["answer"]) for e in episodes) / len(episodes)
        metrics.update(task.episode_metrics([e.text for e in episodes]))
    metrics["completion_tokens"] = sum(len(e.ids) for e in episodes) / len(episodes)
    return metrics


def throughput(stats: dict, trained_tokens: int, t0: float) -> dict[str, float]:
    """Sampling and overall (sampled + trained) tokens/s of one step that started at ``t0``."""
    return {"sample_tokens_per_s": stats["sample_tokens_per_s"],
            "tokens_per_s": (stats["sampled_tokens"] + trained_tokens) / max(time.time() - t0, 1e-9)}


def group_update(policy, optimizer, episodes: list[Episode], reference, cfg: GRPOConfig,
                 generator: torch.Generator | None = None) -> dict[str, float]:
    """Advantages + update for groups of single-turn episodes: each group's advantage (its rewards
    centred, scaled per ``cfg.advantage_scale``) on every action token, one KL coefficient ``beta``,
    then :func:`grpo_update`."""
    batch = collate(episodes, policy.pad_id)
    adv = group_advantages(batch.rewards, batch.groups, cfg.advantage_scale).unsqueeze(1).expand_as(batch.old_logprobs)
    kl_coef = torch.full_like(batch.old_logprobs, cfg.beta)
    return grpo_update(policy, optimizer, batch, adv, kl_coef, reference, cfg, generator)


class OptimizerAndReference(PhaseBase):
    """Resumable state shared by the policy-gradient phases: the optimizer (``self.opt``) and, when
    the phase keeps its own, the frozen KL reference (``self.reference``). Not a learner: each phase's
    ``step`` is its own, flat."""

    reference = None
    saves_reference = True  # False where the reference lives in the run's artifacts instead

    def on_start(self, step: int) -> None:
        # the KL reference is the policy as the phase starts (cfg.beta > 0 only: it costs a forward a step)
        if self.cfg.beta > 0 and self.reference is None:
            self.reference = frozen_copy(self.policy.model)

    def state_dict(self) -> dict:
        st = {"opt": self.opt.state_dict()}
        if self.reference is not None and self.saves_reference:
            st["ref"] = self.reference.state_dict()
        return st

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        if "ref" in state:
            self.reference = frozen_copy(self.policy.model)
            self.reference.load_state_dict(state["ref"])


class GRPOPhase(OptimizerAndReference):
    """Single-turn GRPO with the recipe's reward terms."""

    key_metrics = ("reward", "accuracy", "kl", "tokens_per_s")

    def __init__(self, cfg: GRPOConfig, ctx):
        if not len(ctx.rewards):
            raise ConfigError(f"phase '{cfg.label}' (grpo) needs at least one reward term in the recipe's `rewards:` list.")
        self.cfg, self.ctx, self.policy = cfg, ctx, ctx.policy
        self.opt = make_adamw(self.policy.model.parameters(), cfg.lr, cfg.weight_decay)

    def step(self, step: int, global_step: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        t0 = time.time()
        # collect + score
        gen = ctx.generator(global_step)
        problems = ctx.task.sample_problems(cfg.prompts_per_step, gen)
        sampling = Sampling(cfg.max_new_tokens or ctx.task.max_new_tokens, cfg.temperature, cfg.top_p,
                            batch_size=cfg.sample_batch_size)
        episodes, stats = rollout(self.policy, problems, samples=cfg.group_size, sampling=sampling, generator=gen,
                                  rewards=ctx.rewards, workers=ctx.workers)
        metrics = batch_metrics(ctx.task, ctx.rewards, episodes)
        # advantages (the group's, on every action token) + update
        upd = group_update(self.policy, self.opt, episodes, self.reference, cfg, ctx.generator(global_step, salt=1))
        metrics.update(upd)
        metrics["lr"] = self.opt.param_groups[0]["lr"]
        metrics.update(throughput(stats, upd["trained_tokens"], t0))
        return metrics


def _select(batch: TokenBatch, idx: torch.Tensor) -> TokenBatch:
    """Rows ``idx`` of a batch, trimmed to their longest sequence (less padding, faster steps)."""
    am = batch.attention_mask[idx]
    T = min(-(-int(am.sum(1).max()) // 8) * 8, am.shape[1])
    rows = idx.tolist()
    return TokenBatch(
        input_ids=batch.input_ids[idx, :T],
        attention_mask=am[:, :T],
        action_mask=batch.action_mask[idx, : T - 1],
        old_logprobs=batch.old_logprobs[idx, : T - 1],
        turn_index=batch.turn_index[idx, : T - 1],
        rewards=batch.rewards[idx],
        groups=batch.groups[idx],
        images=[batch.images[i] for i in rows] if batch.images is not None else None,
        tensors={k: v[idx] for k, v in batch.tensors.items()} if batch.tensors is not None else None,
    )


@PHASES.register("grpo", GRPOConfig, requires={"task": SingleTurnTask, "policy": TokenPolicy})
def make_grpo(cfg: GRPOConfig, ctx) -> GRPOPhase:
    """Group-relative policy optimisation with the verifier rewards of the recipe."""
    return GRPOPhase(cfg, ctx)
