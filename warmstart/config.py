"""Base config types every plug-in's config derives from (the bottom layer: imports nothing of warmstart).

Recipe loading, ``--set`` overrides and error formatting live in :mod:`warmstart.engine.config`;
plug-ins (tasks, policies, phases, rewards, search strategies) only need these classes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PluginConfig(Strict):
    kind: str = Field(description="which registered plug-in this block configures")


class PhaseConfig(PluginConfig):
    """Fields common to every phase (SFT, GRPO, PPO ...)."""

    name: str | None = Field(None, description="label in logs and summary.json; defaults to kind")
    steps: int = Field(100, ge=0, description="optimizer updates (or iterations) in this phase")
    role: Literal["init", "learn"] = Field(
        "learn", description="'init' phases produce the warm start reported as summary['init']"
    )
    eval_every: int = Field(0, ge=0, description="evaluate every N steps during the phase (0: only at its end)")
    report_as: str | None = Field(
        None, description="also report this phase's final evaluation at the top of summary.json under this key (e.g. 'offline')"
    )

    @property
    def label(self) -> str:
        return self.name or self.kind


class RewardConfig(PluginConfig):
    """Fields common to every reward term."""

    name: str | None = Field(None, description="name of the term in logs; defaults to kind")
    weight: float = Field(1.0, description="weight of this term in the total reward")

    @property
    def label(self) -> str:
        return self.name or self.kind


class EvalConfig(Strict):
    n: int = Field(500, ge=1, description="held-out problems (or episodes for vector policies)")
    samples: int = Field(8, ge=1, description="k for pass@k (samples per problem at `temperature`)")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature for pass@k")
    max_new_tokens: int | None = Field(None, description="defaults to the task's own limit")
    batch_size: int = Field(256, ge=1, description="prompts per sampling batch")
    seed: int = Field(1234, description="seed of the evaluation sampler (fixed, so evals compare)")
    before: bool = Field(False, description="also evaluate the starting policy before any phase")
