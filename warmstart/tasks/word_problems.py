"""Procedural GSM8K-style word problems: short stories about people and things, answered on a final
``#### <number>`` line, as in GSM8K's reference solutions.

Each problem is one to ``max_ops`` arithmetic steps (buy more, give some away, double or triple,
give away half) over small whole numbers, told as a story::

    Mia has 7 apples. She buys 5 more apples. Then she gives away 3 apples.
    How many apples does Mia have now?

    worked solution:  7 + 5 = 12
                      12 - 3 = 9
                      #### 9

Every intermediate result is a non-negative whole number (divisions are exact). The held-out split is
disjoint from anything training draws. The prompt ends with an instruction to finish on the
``####`` line, so a chat model that follows it can be scored by the same exact-answer verifier as
GSM8K (``rewards: [{kind: exact_answer, marker: "####"}]``).
"""

from __future__ import annotations

import random

import torch
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import ConfigError
from warmstart.registry import TASKS
from warmstart.tasks.base import Problem, ReasoningTask

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Ben", "Emma", "Noah"]
PRONOUN = {"Mia": "She", "Ava": "She", "Zoe": "She", "Ivy": "She", "Lily": "She", "Emma": "She"}
THINGS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards", "coins", "flowers"]
INSTRUCTION = "Solve the problem. Write the final answer on the last line as '#### <number>'."


class WordProblemsConfig(PluginConfig):
    kind: str = "word_problems"
    min_ops: int = Field(1, ge=1, le=4, description="fewest arithmetic steps in a problem")
    max_ops: int = Field(2, ge=1, le=4, description="most arithmetic steps in a problem")
    max_number: int = Field(12, ge=2, le=1000, description="largest number a story states")
    n_demos: int = Field(500, ge=0, description="worked demonstrations in the train split (for SFT)")
    n_test: int = Field(200, ge=1, description="held-out problems (never drawn for training)")
    max_new_tokens: int = Field(64, ge=4, description="completion budget")
    instruction: str = Field(INSTRUCTION, description="appended to every story (how to format the answer)")
    data_seed: int = Field(0, description="seed of the problem generator (fixed, so held-out sets are comparable across runs)")


def _step(rng: random.Random, acc: int, thing: str, pronoun: str, max_number: int) -> tuple[str, int, str]:
    """One story sentence acting on the running count ``acc``: (sentence, new count, worked line)."""
    kinds = ["add", "mul"] + (["sub"] if acc > 1 else []) + (["half"] if acc % 2 == 0 else [])
    kind = rng.choice(kinds)
    if kind == "add":
        n = rng.randint(2, max_number)
        return f"{pronoun} buys {n} more {thing}.", acc + n, f"{acc} + {n} = {acc + n}"
    if kind == "sub":
        n = rng.randint(1, acc - 1)
        return f"Then {pronoun.lower()} gives away {n} {thing}.", acc - n, f"{acc} - {n} = {acc - n}"
    if kind == "mul":
        n = rng.choice([2, 3])
        word = {2: "doubles", 3: "triples"}[n]
        return f"Then the number of {thing} {pronoun.lower()} has {word}.", acc * n, f"{acc} * {n} = {acc * n}"
    return f"Then {pronoun.lower()} gives away half of the {thing}.", acc // 2, f"{acc} / 2 = {acc // 2}"


def make_word_problem(rng: random.Random, cfg: WordProblemsConfig) -> Problem:
    """One story with its answer and worked solution, drawn from ``rng``."""
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    pronoun = PRONOUN.get(name, "He")
    acc = rng.randint(2, cfg.max_number)
    story, work = [f"{name} has {acc} {thing}."], []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        sentence, acc, line = _step(rng, acc, thing, pronoun, cfg.max_number)
        story.append(sentence)
        work.append(line)
    story.append(f"How many {thing} does {name} have now?")
    prompt = " ".join(story) + ("\n" + cfg.instruction if cfg.instruction else "")
    return Problem(prompt=prompt, answer=str(acc), solution="\n".join(work + [f"#### {acc}"]),
                   info={"ops": len(work)})


class WordProblems(ReasoningTask):
    """GSM8K-style word problems answered on a ``#### <number>`` line."""

    answer_marker = "####"
    step_separator = "\n"

    def __init__(self, cfg: WordProblemsConfig, split: str = "train", seed: int = 0):
        if cfg.min_ops > cfg.max_ops:
            raise ConfigError(f"task.min_ops ({cfg.min_ops}) is more than task.max_ops ({cfg.max_ops}).")
        self.cfg = cfg
        self.max_new_tokens = cfg.max_new_tokens
        rng = random.Random(cfg.data_seed)
        test: dict[str, Problem] = {}
        for _ in range(50 * cfg.n_test):  # bounded: a tiny problem space cannot hang the loop
            p = make_word_problem(rng, cfg)
            test.setdefault(p.prompt, p)
            if len(test) == cfg.n_test:
                break
        else:
            raise ConfigError(f"task.n_test {cfg.n_test}: only {len(test)} distinct word problems came out of "
                              f"{50 * cfg.n_test} draws at max_ops {cfg.max_ops}, max_number {cfg.max_number}. "
                              "Ask for fewer, or raise max_ops / max_number.")
        self._test_prompts = set(test)
        if split == "test":
            problems = list(test.values())
        else:
            problems = self._fresh(random.Random(cfg.data_seed + 1), cfg.n_demos)
        super().__init__(problems, seed)

    def _fresh(self, rng: random.Random, n: int) -> list[Problem]:
        out: list[Problem] = []
        for _ in range(1000 * max(n, 1)):
            if len(out) == n:
                break
            p = make_word_problem(rng, self.cfg)
            if p.prompt not in self._test_prompts:
                out.append(p)
        return out

    def sample_problems(self, n: int, generator: torch.Generator) -> list[Problem]:
        """Fresh problems for RL (never a held-out one), drawn from ``generator``."""
        return self._fresh(random.Random(int(torch.randint(2**31 - 1, (1,), generator=generator))), n)


@TASKS.register("word_problems", WordProblemsConfig)
def make_word_problems(cfg: WordProblemsConfig, split: str = "train", seed: int = 0) -> WordProblems:
    """Procedural GSM8K-style word problems with '#### answer' lines."""
    return WordProblems(cfg, split, seed)
