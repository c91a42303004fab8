"""Behaviour cloning of expert demonstrations for a sequence policy (``kind: bc``): LID's warm
start on BabyAI (METHODS.md C.3), the roadmap's "BC" for a non-text action space.

Each step draws ``batch_size`` (observation, expert action) pairs from the task's bot
demonstrations with the step's seeded generator (so a resume needs no data-loader state) and takes
one AdamW step of cross-entropy (:func:`warmstart.learn.lid.bc_update`). At the end the demos go
into the run's artifacts store as ``babyai_dataset``, where the data-gathering rounds
(``kind: lid_rounds``) continue from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import GoalEnvTask, SequencePolicy
from warmstart.errors import DataError
from warmstart.learn.lid import DATASET_ARTIFACT, bc_update, draw, episode_steps
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.registry import PHASES


class BCConfig(PhaseConfig):
    kind: str = "bc"
    role: Literal["init", "learn"] = "init"
    batch_size: int = Field(32, ge=1, description="(observation, action) pairs per step")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (LID's released code: 1e-5 for GPT-2 at full size)")
    schedule: Schedule = Field("constant", description="learning-rate schedule")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")


@PHASES.register("bc", BCConfig, "behaviour cloning of the task's expert demos (sequence policies, e.g. LID on BabyAI)",
                 requires={"task": GoalEnvTask, "policy": SequencePolicy})
class BCPhase(OptimizerPhase):
    def __init__(self, cfg: BCConfig, ctx):
        self.cfg, self.ctx, self.policy = cfg, ctx, ctx.policy
        self.demos = ctx.task.bot_demos()
        self.samples = episode_steps(self.demos, self.policy.spec.history)
        if not self.samples:
            raise DataError(f"phase '{cfg.label}': the task produced no demonstrations to clone.")
        self.opt = make_adamw(self.policy.parameters(), cfg.lr, cfg.weight_decay)

    key_metrics = ("loss", "accuracy")

    def step(self, step: int, global_step: int) -> dict:
        cfg = self.cfg
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule))
        batch = draw(self.samples, cfg.batch_size, self.ctx.generator(global_step))
        out = bc_update(self.policy, self.opt, batch, cfg.max_grad_norm)
        out["demo_steps"] = len(self.samples)
        return out

    def on_end(self) -> None:
        self.ctx.artifacts.put(DATASET_ARTIFACT, list(self.demos))
