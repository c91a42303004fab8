"""Self-correction on chain arithmetic: two attempts, the second after an instruction to fix errors.

One episode (``|`` separates what the policy writes from what the task appends)::

    prompt   4*7+6*3+9=
    turn 1   #3</s>                      <- attempt 1 (policy)
    env      \\nfix any error:             <- the task's fixed instruction (no loss, no gradient)
    turn 2   4*7=8;8+6=4;4*3=2;2+9=1;#1</s>  <- attempt 2 (policy)

Each attempt is rewarded 1 when its answer is right (``turn_rewards[k]["correct"]``).

Why this setting makes self-correction learnable for a ~1M-parameter model: answering at once is
hard (the answer-only first attempts of the SFT model are mostly wrong) while working the chain out
step by step is easy (worked answers are mostly right). The SFT warm start sees two-turn demos
whose first attempt answers at once (``1 - worked_fraction`` of them), and whose second attempt
copies the first (most of them) or, in a ``revision_fraction`` share, works the problem out: a
"revision" the model has seen but rarely uses. Self-correction then means: keep the quick first
attempt, and in the second attempt switch to the reliable worked strategy. In a
``wrong_first_fraction`` share of the answer-at-once demos the first attempt is a wrong answer (given
as context, with no loss): otherwise every worked revision in the demos ends on attempt 1's answer,
and the model learns to copy that answer at the end of its worked revision instead of computing it. The metrics say whether
a method learned that (Δ > 0, Δ^{i→c} up), learned nothing (Δ ≈ 0), or collapsed to answering the
same twice (``changed`` ≈ 0).
"""

from __future__ import annotations

import random
import re

from pydantic import Field

from warmstart.episode import Episode
from warmstart.errors import ConfigError
from warmstart.registry import TASKS
from warmstart.tasks.arithmetic import ChainArithmetic, ChainArithmeticConfig, evaluate_chain
from warmstart.tasks.base import TurnResult, extract_answer, normalize_answer

_TOKEN = re.compile(r"\d|[+\-*]")


class SelfCorrectConfig(ChainArithmeticConfig):
    kind: str = "self_correct_arithmetic"
    max_turns: int = Field(2, ge=1, le=8, description="attempts per episode (2 in SCoRe)")
    instruction: str = Field("\nfix any error:", min_length=1,
                             description="environment message before every later attempt (kept short for char-level models)")
    revision_fraction: float = Field(0.15, ge=0.0, le=1.0,
                                     description="share of SFT demos whose second attempt works the problem out (else it copies the first)")
    worked_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of SFT demos whose first attempt is worked step by step")
    wrong_first_fraction: float = Field(
        0.0, ge=0.0, le=1.0,
        description="share of answer-at-once SFT demos whose first attempt is a wrong answer, shown as context (no loss); "
                    "without it a worked revision always ends on attempt 1's answer, and the model learns to copy it")
    budget_steps: int | None = Field(
        None, ge=1,
        description="per-attempt token budget, in worked steps: each attempt may write at most this many steps and an "
                    "answer. Attempt 1 works the first budget_steps steps then answers at once; a revision continues "
                    "the chain from attempt 1's last step (needs n_terms - 1 <= 2 * budget_steps). None: no budget")


STEP_CHARS = 6  # one worked step "a*b=c;" (single-digit values: modulus <= 10)


def _chain(prompt: str, modulus: int) -> tuple[int, list[str]]:
    toks = _TOKEN.findall(prompt)
    digits, ops = [int(t) for t in toks[0::2]], toks[1::2]
    return evaluate_chain(digits, ops, modulus)


def worked_solution(prompt: str, modulus: int = 10) -> str:
    """The step-by-step solution of a chain prompt such as ``4*7+6*3+9=``."""
    ans, steps = _chain(prompt, modulus)
    return ";".join(steps) + f";#{ans}"


def partial_attempt(prompt: str, k: int, answer: str, modulus: int = 10) -> str:
    """The first ``k`` worked steps of the chain, then ``answer`` given at once:
    ``partial_attempt("4*7+6*3+9=", 2, "1")`` = ``"4*7=8;8+6=4;#1"``."""
    _, steps = _chain(prompt, modulus)
    return "".join(s + ";" for s in steps[:k]) + f"#{answer}"


def continuation(prompt: str, k: int, modulus: int = 10) -> str:
    """The worked steps after the first ``k`` and the answer: what a revision writes when it picks up
    a partial attempt where it stopped. ``continuation("4*7+6*3+9=", 2)`` = ``"4*3=2;2+9=1;#1"``."""
    ans, steps = _chain(prompt, modulus)
    return "".join(s + ";" for s in steps[k:]) + f"#{ans}"


def budget_tokens(budget_steps: int) -> int:
    """Per-attempt token limit (one token per character) that fits ``budget_steps`` worked steps, the
    answer (``#d``) and the end token, with one token to spare, but never one more step and an answer."""
    return STEP_CHARS * budget_steps + 4


class SelfCorrectArithmetic(ChainArithmetic):
    """Chain arithmetic with ``max_turns`` attempts (a :class:`~warmstart.contracts.MultiTurnTask`)."""

    def __init__(self, cfg: SelfCorrectConfig, split: str = "train", seed: int = 0):
        super().__init__(cfg, split, seed)
        self.max_turns = cfg.max_turns
        self.instruction = cfg.instruction
        k, n_steps = cfg.budget_steps, cfg.n_terms - 1
        if k is not None:
            if not (k < n_steps <= 2 * k) or cfg.modulus > 10:
                raise ConfigError(
                    f"task.budget_steps {k} with n_terms {cfg.n_terms} ({n_steps} steps): the budget must be too short for "
                    f"one attempt to work the whole chain and long enough for two attempts together, i.e. "
                    f"{(n_steps + 1) // 2} <= budget_steps < {n_steps} (and modulus <= 10, one-digit steps).")
            # one limit per attempt: attempt 1 can work only part of the chain, a revision the rest
            self.max_new_tokens = [budget_tokens(k)] * cfg.max_turns

    # -- the multi-turn contract
    def respond(self, episode: Episode, turn: int) -> TurnResult:
        ok = self.is_correct(episode.turn_texts[turn], episode.info["answer"])
        last = turn + 1 >= self.max_turns
        return TurnResult(rewards={"correct": float(ok)}, message=None if last else self.instruction, done=last)

    # -- warm start: two-turn demonstrations
    def demo_episodes(self, policy) -> list[Episode]:
        """Demos as multi-turn episodes: attempt 1 (answer-only or worked, right), the instruction
        (environment tokens), attempt 2 (a copy of attempt 1, or, in a ``revision_fraction`` share,
        the worked solution). Loss on both attempts, except that in a ``wrong_first_fraction`` share
        of the answer-at-once demos attempt 1 is a wrong answer given as context (no loss).
        With ``budget_steps`` k, attempt 1 is the first k worked steps and an answer (right, or in a
        ``wrong_first_fraction`` share wrong and given as context), and a revision continues the
        chain from attempt 1's k-th step (:func:`continuation`)."""
        rng = random.Random(self.cfg.data_seed + 2)
        wrong_rng = random.Random(self.cfg.data_seed + 3)
        eos = [policy.eos_id] if policy.eos_id is not None else []
        out = []
        k, mod = self.cfg.budget_steps, self.cfg.modulus
        for p in self.problems:
            # with a budget, attempt 1 works the first k steps and answers the rest at once
            first = p.solution if k is None else partial_attempt(p.prompt, k, p.answer, mod)
            wrong_first = False
            if self.cfg.wrong_first_fraction and (k is not None or self.step_separator not in first) \
                    and wrong_rng.random() < self.cfg.wrong_first_fraction:
                wrong = wrong_rng.choice([d for d in range(mod) if str(d) != p.answer])
                first = f"{self.answer_marker}{wrong}" if k is None else partial_attempt(p.prompt, k, str(wrong), mod)
                wrong_first = True
            revision = worked_solution(p.prompt, mod) if k is None else continuation(p.prompt, k, mod)
            attempts = [first]
            for _ in range(self.max_turns - 1):
                attempts.append(revision if rng.random() < self.cfg.revision_fraction else attempts[-1])
            e = Episode(prompt=p.prompt, prompt_ids=policy.encode_prompt(p.prompt), info={"answer": p.answer})
            for j, a in enumerate(attempts):
                if j:
                    e.add_env(policy.encode(self.instruction))
                ids = policy.encode(a) + eos
                if j == 0 and wrong_first:
                    e.add_env(ids)
                else:
                    e.add_turn(ids, [0.0] * len(ids), a)
            out.append(e)
        return out

    # -- evaluation (greedy attempts, run by warmstart.rollout.evaluate): Acc@t1, Acc@t2, Δ, Δ^{i→c}, Δ^{c→i}
    def turn_metrics(self, episodes: list[Episode]) -> dict:
        """Self-correction metrics of finished episodes (``accuracy`` is the last attempt's)."""
        correct, changed = [], []
        K = self.max_turns
        for e in episodes:
            texts = e.turn_texts + [""] * (K - len(e.turn_texts))
            correct.append([self.is_correct(t, e.info["answer"]) for t in texts])
            a1, a2 = (normalize_answer(extract_answer(t, self.answer_marker)) for t in (texts[0], texts[-1]))
            changed.append(a1 != a2)
        out = {"n": len(episodes)}
        out.update(self_correction_metrics(correct, changed if K >= 2 else None))
        out["accuracy"] = out[f"acc@t{K}"]
        for k in range(K):
            out[f"worked@t{k + 1}"] = sum(self.step_separator in (e.turn_texts[k] if k < len(e.turn_texts) else "")
                                          for e in episodes) / max(len(episodes), 1)
        if K >= 2:  # the last attempt rewrote attempt 1 (not a copy), whatever its answer
            out["revised"] = sum(len(e.turn_texts) >= K and e.turn_texts[-1].strip() != e.turn_texts[0].strip()
                                 for e in episodes) / max(len(episodes), 1)
        out["mean_tokens"] = sum(len(e.ids) for e in episodes) / max(len(episodes), 1)
        return out


def self_correction_metrics(correct: list[list[bool]], changed: list[bool] | None = None) -> dict[str, float]:
    """Acc@t for every turn and, with two or more turns, the SCoRe metrics between the first and
    the last: ``delta`` = Acc@t_last - Acc@t1, ``delta_i2c`` = share of problems wrong at t1 and
    right at the last turn, ``delta_c2i`` = right at t1 and wrong at the last turn (all shares of
    all problems, as in the paper). ``correct[p][k]``: problem p correct at turn k. ``changed[p]``:
    the last answer differs from the first (its share is reported as ``changed``)."""
    n = len(correct)
    if n == 0:
        return {}
    K = len(correct[0])
    out: dict[str, float] = {}
    for k in range(K):
        out[f"acc@t{k + 1}"] = sum(c[k] for c in correct) / n
    if K >= 2:
        out["delta"] = out[f"acc@t{K}"] - out["acc@t1"]
        out["delta_i2c"] = sum((not c[0]) and c[-1] for c in correct) / n
        out["delta_c2i"] = sum(c[0] and not c[-1] for c in correct) / n
    if changed is not None:
        out["changed"] = sum(changed) / n
    return out


@TASKS.register("self_correct_arithmetic", SelfCorrectConfig)
def make_self_correct(cfg: SelfCorrectConfig, split: str = "train", seed: int = 0) -> SelfCorrectArithmetic:
    """Chain arithmetic in two attempts: the second after an instruction to find and fix any mistake."""
    return SelfCorrectArithmetic(cfg, split, seed)
