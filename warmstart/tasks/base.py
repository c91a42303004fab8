"""What a reasoning task provides: problems with a reference answer, demonstrations, a verifier.

Token-policy tasks subclass :class:`ReasoningTask`. The conventions every built-in verifier and
evaluator relies on:

* the policy's output ends with ``answer_marker`` followed by the answer (``...;#7``);
* worked solutions separate steps with ``step_separator`` (search uses it to expand step by step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch


@dataclass
class TurnResult:
    """A multi-turn task's answer to one policy turn (see :class:`warmstart.contracts.MultiTurnTask`):
    the reward terms of that turn, and either the next environment message (``message``) or the end
    of the episode (``done=True``)."""

    rewards: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    done: bool = False
    # who speaks ``message``: None = plain text appended as is; a chat role (e.g. "tool") lets a chat
    # policy wrap it in its template's markers for that role (see LMPolicy.encode_message)
    role: str | None = None
    # images that come with ``message`` (a tool's zoomed crop, a chart with a line drawn): the rollout
    # appends them to ``Episode.images`` (``img_2``, ``img_3``, ...) and their placeholder tokens after
    # the message's text, as environment tokens; only a policy that reads images may receive them
    images: list[Any] = field(default_factory=list)


@dataclass
class Problem:
    """One task instance: the prompt, the reference answer and, when known, a worked solution."""

    prompt: str
    answer: str
    solution: str | None = None  # full completion text of a demonstration (steps + marker + answer)
    info: dict[str, Any] = field(default_factory=dict)
    images: list[Any] = field(default_factory=list)  # PIL images or arrays shown with the prompt (VLM policies)
    tools: list[dict] = field(default_factory=list)  # JSON schemas a chat policy shows in its prompt (apply_chat_template(tools=))


_NUM_CLEAN = re.compile(r"[,\s$%]")


def normalize_answer(text: str | None) -> str | None:
    """Canonical form of an answer: numbers compare by value (``1,000`` = ``1000.0``, ``1/2`` = ``0.5``),
    anything else by its stripped, lower-cased text."""
    if text is None:
        return None
    s = text.strip()
    if not s:
        return None
    num = _NUM_CLEAN.sub("", s).rstrip(".")
    try:
        if "/" in num:
            a, b = num.split("/", 1)
            val = Fraction(Fraction(a), Fraction(b))
        else:
            val = Fraction(num)
        return str(val.numerator) if val.denominator == 1 else f"{val.numerator}/{val.denominator}"
    except (ValueError, ZeroDivisionError):
        return " ".join(s.lower().split())


def extract_answer(text: str, marker: str = "#") -> str | None:
    """The text after the last ``marker`` up to the end of that line; None when there is no marker."""
    i = text.rfind(marker)
    if i < 0:
        return None
    ans = text[i + len(marker) :].split("\n", 1)[0].strip()
    return ans or None


class ReasoningTask:
    """Base class of single-answer reasoning tasks (procedural or file-backed)."""

    answer_marker: str = "#"
    step_separator: str = ";"
    max_new_tokens: int = 64

    def __init__(self, problems: list[Problem], seed: int = 0):
        self.problems = problems
        self.seed = seed

    # -- data
    def sample_problems(self, n: int, generator: torch.Generator) -> list[Problem]:
        """``n`` problems drawn with replacement (procedural tasks may generate fresh ones)."""
        idx = torch.randint(len(self.problems), (n,), generator=generator).tolist()
        return [self.problems[i] for i in idx]

    def eval_problems(self, n: int) -> list[Problem]:
        """The first ``n`` held-out problems, always the same ones."""
        return self.problems[:n]

    def demos(self) -> list[tuple[str, str]]:
        """(prompt, completion) pairs for SFT."""
        return [(p.prompt, p.solution) for p in self.problems if p.solution]

    # -- checking
    def is_correct(self, text: str, problem_answer: str) -> bool:
        got = normalize_answer(extract_answer(text, self.answer_marker))
        return got is not None and got == normalize_answer(problem_answer)

    def episode_metrics(self, texts: list[str]) -> dict[str, float]:
        """Task-specific shares reported by evaluation and learners (e.g. how many answers are worked)."""
        if not texts:
            return {}
        worked = sum(1 for t in texts if self.step_separator in t)
        return {"worked": worked / len(texts)}
