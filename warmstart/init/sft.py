"""Supervised fine-tuning: the warm start. Demonstrations in, policy out.

Each step draws a batch of (prompt, completion) demos, trains next-token cross-entropy on the
completion tokens only (prompt tokens are context, masked out of the loss) and on the EOS that ends
it. Batches are drawn from the step's seeded generator, so resuming needs no data-loader state.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import HasDemoEpisodes
from warmstart.errors import DataError
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.learn.supervised import demo_episodes, sft_update
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


class SFTPhase(OptimizerPhase):
    def __init__(self, cfg: SFTConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        if cfg.data == "task" and isinstance(ctx.task, HasDemoEpisodes):
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

    key_metrics = ("loss", "tokens_per_s")

    def step(self, step: int, global_step: int) -> dict:
        cfg = self.cfg
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        gen = self.ctx.generator(global_step)
        idx = torch.randint(len(self.episodes), (cfg.batch_size,), generator=gen).tolist()
        out = sft_update(self.ctx.policy, self.opt, [self.episodes[i] for i in idx], cfg.max_grad_norm, cfg.max_buckets)
        out["lr"] = self.opt.param_groups[0]["lr"]
        return out


@PHASES.register("sft", SFTConfig)
def make_sft(cfg: SFTConfig, ctx) -> SFTPhase:
    """Supervised fine-tuning on demonstrations (loss on completion tokens only)."""
    return SFTPhase(cfg, ctx)
