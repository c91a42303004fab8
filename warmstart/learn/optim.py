"""Optimizer and learning-rate schedule shared by the token and vector learners.

The schedule is a pure function of the step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from warmstart.contracts import PhaseBase

Schedule = Literal["constant", "cosine", "linear"]


def lr_at(step: int, total: int, base_lr: float, schedule: Schedule = "constant", warmup: int = 0, min_ratio: float = 0.0) -> float:
    """Learning rate for 0-based ``step`` of ``total``: linear warm-up, then constant / cosine /
    linear decay down to ``min_ratio * base_lr``."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return base_lr
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        mult = 0.5 * (1.0 + math.cos(math.pi * frac))
    elif schedule == "linear":
        mult = 1.0 - frac
    else:
        raise ValueError(f"unknown schedule {schedule!r}: expected constant, cosine or linear")
    return base_lr * (min_ratio + (1.0 - min_ratio) * mult)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def make_adamw(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    # only what trains: a LoRA policy's frozen base weights get no optimizer state (nor a step)
    params = [p for p in params if p.requires_grad]
    # foreach kernels: fewer Python-level ops per step, which matters for tiny models on CPU
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, foreach=True)


def guarded_step(optimizer: torch.optim.Optimizer, params, max_grad_norm: float, loss: float | None = None) -> tuple[float, bool]:
    """Clip the gradient and take one optimizer step -- unless the loss or the gradient norm is
    non-finite, in which case the gradients are zeroed and the step is skipped (a NaN step would
    poison the weights and the optimizer's moments for good). Returns ``(grad_norm, skipped)``;
    learners count the skips as ``skipped_updates`` and the engine stops a run that keeps skipping."""
    params = list(params)
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if math.isfinite(gnorm) and (loss is None or math.isfinite(loss)):
        optimizer.step()
        return gnorm, False
    for p in params:  # in place: PPO's flat gradient buffers must stay linked
        if p.grad is not None:
            p.grad.zero_()
    return gnorm, True


class OptimizerPhase(PhaseBase):
    """A phase whose whole resumable state is ``self.opt`` (the schedule is a function of the step,
    and batches come from the step's seeded generator)."""

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
