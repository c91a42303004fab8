"""Supervised fine-tuning: the warm start. Demonstrations in, policy out.

Each step draws a batch of (prompt, completion) demos, trains next-token cross-entropy on the
completion tokens only (prompt tokens are context, masked out of the loss) and on the EOS that ends
it. Batches are drawn from the step's seeded generator, so resuming needs no data-loader state.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from pydantic import Field

from warmstart.engine.config import PhaseConfig
from warmstart.episode import Episode, collate, length_buckets
from warmstart.errors import DataError
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.registry import PHASES


class SFTConfig(PhaseConfig):
    kind: str = "sft"
    role: Literal["init", "learn"] = "init"
    batch_size: int = Field(128, ge=1, description="demonstrations per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    schedule: Schedule = Field("cosine", description="learning-rate schedule after warm-up")
    warmup: int = Field(20, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    max_buckets: int = Field(4, ge=1, description="split each batch into at most this many length buckets (less padding)")
    data: str = Field("task", description="'task' (the task's demonstrations) or a JSONL path with prompt/solution")


def demo_episodes(policy, pairs: list[tuple[str, str]]) -> list[Episode]:
    """Turn (prompt, completion) pairs into episodes whose completion (+EOS) is the policy's turn."""
    eps = []
    for prompt, completion in pairs:
        e = Episode(prompt=prompt, prompt_ids=policy.encode_prompt(prompt))
        ids = policy.encode(completion) + ([policy.eos_id] if policy.eos_id is not None else [])
        e.add_turn(ids, [0.0] * len(ids), completion)
        eps.append(e)
    return eps


def sft_update(policy, opt, episodes: list[Episode], max_grad_norm: float = 1.0, max_buckets: int = 4) -> dict:
    """One optimizer step of next-token cross-entropy on the policy tokens of ``episodes`` (prompt
    and environment tokens are context only). Used by every learner that imitates episodes: SFT,
    expert iteration, STaR / Pair-SFT. The batch runs as length-bucketed micro-batches whose losses
    are normalised by the whole batch's token count, so the gradient equals the unsplit one."""
    t0 = time.time()
    policy.model.train()
    opt.zero_grad(set_to_none=True)
    n_tok = sum(sum(e.action_mask) for e in episodes)
    total, ntok = 0.0, 0
    for bucket in length_buckets([len(e.prompt_ids) + len(e.ids) for e in episodes], max_buckets):
        batch = collate([episodes[i] for i in bucket], policy.pad_id)
        lp = policy.forward_logprobs(batch.input_ids, batch.attention_mask)  # (b, T-1)
        loss = -(lp * batch.action_mask).sum() / max(n_tok, 1)
        loss.backward()
        total += loss.item()
        ntok += int(batch.attention_mask.sum())
    gnorm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), max_grad_norm)
    opt.step()
    dt = time.time() - t0
    return {"loss": total, "grad_norm": float(gnorm), "tokens": ntok, "tokens_per_s": ntok / max(dt, 1e-9)}


class SFTPhase(OptimizerPhase):
    def __init__(self, cfg: SFTConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        if cfg.data == "task" and hasattr(ctx.task, "demo_episodes"):
            pairs = None  # the task builds its own (e.g. multi-turn) demo episodes
        elif cfg.data == "task":
            pairs = ctx.task.demos()
        else:
            from warmstart.tasks.jsonl import read_jsonl

            pairs = [(p.prompt, p.solution) for p in read_jsonl(cfg.data) if p.solution]
        self.episodes = ctx.task.demo_episodes(ctx.policy) if pairs is None else demo_episodes(ctx.policy, pairs)
        if not self.episodes:
            raise DataError(f"phase '{cfg.label}': no demonstrations (problems with a 'solution') to train on.")
        self.model = ctx.policy.model
        self.opt = make_adamw(self.model.parameters(), cfg.lr, cfg.weight_decay, betas=(0.9, 0.98))

    def step(self, global_step: int) -> dict:
        cfg = self.cfg
        k = self._phase_step
        set_lr(self.opt, lr_at(k, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        gen = self.ctx.generator(global_step)
        idx = torch.randint(len(self.episodes), (cfg.batch_size,), generator=gen).tolist()
        out = sft_update(self.ctx.policy, self.opt, [self.episodes[i] for i in idx], cfg.max_grad_norm, cfg.max_buckets)
        self._phase_step += 1
        out["lr"] = self.opt.param_groups[0]["lr"]
        return out


@PHASES.register("sft", SFTConfig)
def make_sft(cfg: SFTConfig, ctx) -> SFTPhase:
    """Supervised fine-tuning on demonstrations (loss on completion tokens only)."""
    return SFTPhase(cfg, ctx)
