"""Built-in reward terms: exact-answer verifier, format reward, length penalty.

Each is registered by ``kind`` with its config, and each is a plain function of an episode. A task
supplies the answer marker and the reference answer (``episode.info["answer"]``).
"""

from __future__ import annotations

import re

from pydantic import Field

from warmstart.config import RewardConfig
from warmstart.episode import Episode
from warmstart.registry import REWARDS
from warmstart.tasks.base import extract_answer, normalize_answer


class ExactAnswerConfig(RewardConfig):
    kind: str = "exact_answer"
    marker: str = Field("#", description="the answer follows the last occurrence of this marker")
    turn: int | None = Field(None, description="score only this policy turn (0-based; -1 = last); default: the whole output")


def answer_text(e: Episode, turn: int | None) -> str:
    if turn is None:
        return e.text
    return e.turn_texts[turn] if e.turn_texts else e.text


@REWARDS.register("exact_answer", ExactAnswerConfig)
def exact_answer(cfg: ExactAnswerConfig):
    """1.0 when the answer after the marker equals the reference (numbers compared by value), else 0."""

    def fn(e: Episode) -> float:
        ref = e.info.get("answer")
        if ref is None:
            raise KeyError("episode.info has no 'answer' (the task must provide a reference answer)")
        got = normalize_answer(extract_answer(answer_text(e, cfg.turn), cfg.marker))
        return 1.0 if got is not None and got == normalize_answer(str(ref)) else 0.0

    return fn


class FormatConfig(RewardConfig):
    kind: str = "format"
    pattern: str = Field(r"^.*#\s*\S+\s*$", description="regex the whole output must match (re.DOTALL)")


@REWARDS.register("format", FormatConfig)
def format_reward(cfg: FormatConfig):
    """1.0 when the output matches the pattern (default: ends with the answer marker and an answer)."""
    try:
        rx = re.compile(cfg.pattern, re.DOTALL)
    except re.error as err:
        from warmstart.errors import ConfigError

        raise ConfigError(f"rewards: format pattern {cfg.pattern!r} is not a valid regex: {err}") from None

    def fn(e: Episode) -> float:
        return 1.0 if rx.match(e.text.strip()) else 0.0

    return fn


class LengthPenaltyConfig(RewardConfig):
    kind: str = "length_penalty"
    weight: float = -1.0
    target: int = Field(0, ge=0, description="tokens allowed for free")
    scale: int = Field(100, ge=1, description="tokens beyond target that cost one unit")


@REWARDS.register("length_penalty", LengthPenaltyConfig)
def length_penalty(cfg: LengthPenaltyConfig):
    """max(0, policy tokens - target) / scale; give it a negative weight to penalise length."""

    def fn(e: Episode) -> float:
        n = sum(1 for m in e.action_mask if m)
        return max(0, n - cfg.target) / cfg.scale

    return fn
