"""Scorers: what guides a search. ``scorer(problems, texts) -> list[float]``, higher is better.

* :class:`VerifierScorer` -- 1.0 when the answer is right (uses the reference: an oracle, for
  filtering training data and for pass@N-style upper bounds, not for honest test-time search);
* :class:`RewardModelScorer` -- an outcome (ORM) or process (PRM) reward model's probability that
  the (partial) solution leads to the right answer; one batched forward pass for all texts;
* :class:`ConstantScorer` -- no guidance (majority vote, unguided MCTS).

Texts are solutions *without* the prompt; partial ones end at a step separator.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import ConfigError
from warmstart.registry import SCORERS
from warmstart.tasks.base import Problem


class VerifierScorer:
    name = "verifier"

    def __init__(self, task):
        self.task = task

    def __call__(self, problems: list[Problem], texts: list[str]) -> list[float]:
        return [float(self.task.is_correct(t, p.answer)) for p, t in zip(problems, texts)]


class RewardModelScorer:
    def __init__(self, model, batch_size: int = 512):
        self.model = model
        self.name = model.kind
        self.batch_size = batch_size

    def __call__(self, problems: list[Problem], texts: list[str]) -> list[float]:
        return self.model.score([p.prompt for p in problems], texts, self.batch_size)


class ConstantScorer:
    name = "none"

    def __call__(self, problems: list[Problem], texts: list[str]) -> list[float]:
        return [0.5] * len(texts)


class ScorerConfig(PluginConfig):
    """A scorer by kind; ``reward_model`` is the ORM/PRM it reads (a loaded model or a directory)."""

    kind: str
    reward_model: str | None = Field(None, description="directory of the reward model (orm/prm scorers)")

    needs_reward_model: ClassVar[bool] = False


class RewardModelScorerConfig(ScorerConfig):
    needs_reward_model: ClassVar[bool] = True


@SCORERS.register("verifier", ScorerConfig, "1.0 when the answer is right (an oracle: uses the reference)")
def verifier_scorer(task, reward_model=None):
    return VerifierScorer(task)


@SCORERS.register("none", ScorerConfig, "no guidance: every candidate scores 0.5")
def constant_scorer(task, reward_model=None):
    return ConstantScorer()


def _reward_model_scorer(kind: str):
    def factory(task, reward_model=None):
        if reward_model is None:
            raise ConfigError(f"scorer '{kind}' needs a trained {kind.upper()}: train one with a "
                              f"`kind: train_{kind}` phase, or pass its directory (--{kind} DIR / reward_model:).")
        if isinstance(reward_model, (str, Path)):
            from warmstart.rewards.models import RewardModel

            reward_model = RewardModel.load(reward_model)
        return RewardModelScorer(reward_model)

    factory.__doc__ = f"the {kind.upper()}'s probability that the (partial) solution leads to the right answer"
    return factory


SCORERS.register("orm", RewardModelScorerConfig)(_reward_model_scorer("orm"))
SCORERS.register("prm", RewardModelScorerConfig)(_reward_model_scorer("prm"))


def make_scorer(kind: str, task, orm=None, prm=None):
    """A scorer by name: 'verifier', 'orm', 'prm' or 'none' (reward models passed in, loaded or not)."""
    entry = SCORERS.get(kind)
    return entry.factory(task, {"orm": orm, "prm": prm}.get(kind))


def needs_reward_model(kind: str) -> bool:
    """True for scorers that read a trained reward model (orm, prm)."""
    return SCORERS.get(kind).config.needs_reward_model
