"""Scorers: what guides a search. ``scorer(problems, texts) -> list[float]``, higher is better.

* :class:`VerifierScorer` -- 1.0 when the answer is right (uses the reference: an oracle, for
  filtering training data and for pass@N-style upper bounds, not for honest test-time search);
* :class:`RewardModelScorer` -- an outcome (ORM) or process (PRM) reward model's probability that
  the (partial) solution leads to the right answer; one batched forward pass for all texts;
* :class:`ConstantScorer` -- no guidance (majority vote, unguided MCTS).

Texts are solutions *without* the prompt; partial ones end at a step separator.
"""

from __future__ import annotations

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


def make_scorer(kind: str, task, orm=None, prm=None):
    """A scorer by name: 'verifier', 'orm', 'prm' or 'none' (reward models passed in, loaded or not)."""
    from warmstart.errors import ConfigError

    if kind == "verifier":
        return VerifierScorer(task)
    if kind == "none":
        return ConstantScorer()
    if kind in ("orm", "prm"):
        rm = orm if kind == "orm" else prm
        if rm is None:
            raise ConfigError(f"scorer '{kind}' needs a trained {kind.upper()}: train one with a "
                              f"`kind: train_{kind}` phase, or pass its directory (--{kind} DIR / reward_model:).")
        if isinstance(rm, str):
            from warmstart.rewards.models import RewardModel

            rm = RewardModel.load(rm)
        return RewardModelScorer(rm)
    raise ConfigError(f"unknown scorer {kind!r}: expected verifier, orm, prm or none.")
