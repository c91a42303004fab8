"""Procedural arithmetic chains: the quickstart's slow-thinking task.

A problem is a chain of single digits joined by ``+`` and ``*`` (e.g. ``4*7+6*3+9+2*8``), evaluated
strictly left to right and kept modulo 10 at every step. Reading the answer off the prompt at once
is hard for a small model (it must fold six operations in one forward pass); writing the partial
results one by one is easy (each step is a one-digit lookup). Demonstrations come in both styles::

    prompt      4*7+6*3+9+2*8=
    worked      4*7=8;8+6=4;4*3=2;2+9=1;1+2=3;3*8=4;#4
    answer-only #4

SFT on a mix dominated by answer-only demos gives a policy that mostly answers at once (and is often
wrong) yet sometimes works the problem out (and is then right): RL with a correctness reward has a
better strategy to discover. Held-out problems are disjoint from training ones.
"""

from __future__ import annotations

import random

import torch
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.registry import TASKS
from warmstart.tasks.base import Problem, ReasoningTask


class ChainArithmeticConfig(PluginConfig):
    kind: str = "chain_arithmetic"
    n_terms: int = Field(7, ge=2, le=30, description="digits in each chain")
    ops: str = Field("+*", min_length=1, description="operators to draw from (subset of '+-*')")
    modulus: int = Field(10, ge=2, le=10, description="results are kept modulo this (single digit when 10)")
    n_demos: int = Field(4000, ge=0, description="SFT demonstrations in the train split")
    worked_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of demos that are worked step by step")
    n_test: int = Field(1000, ge=1, description="held-out problems (disjoint from training problems)")
    data_seed: int = Field(0, description="seed of the problem generator (fixed, so held-out sets are comparable across runs)")


def evaluate_chain(digits: list[int], ops: list[str], modulus: int) -> tuple[int, list[str]]:
    """Fold the chain left to right mod ``modulus``; returns the result and the worked steps."""
    acc = digits[0]
    steps = []
    for op, d in zip(ops, digits[1:]):
        if op == "+":
            new = (acc + d) % modulus
        elif op == "-":
            new = (acc - d) % modulus
        elif op == "*":
            new = (acc * d) % modulus
        else:
            raise ValueError(f"unknown operator {op!r}")
        steps.append(f"{acc}{op}{d}={new}")
        acc = new
    return acc, steps


class ChainArithmetic(ReasoningTask):
    answer_marker = "#"
    step_separator = ";"

    def __init__(self, cfg: ChainArithmeticConfig, split: str = "train", seed: int = 0):
        bad = set(cfg.ops) - set("+-*")
        if bad:
            from warmstart.errors import ConfigError

            raise ConfigError(f"task.ops: unsupported operators {''.join(sorted(bad))!r}; use a subset of '+-*'.")
        distinct = 10 ** cfg.n_terms * len(set(cfg.ops)) ** (cfg.n_terms - 1)
        if cfg.n_test >= distinct:  # the sampling loops below would never finish
            from warmstart.errors import ConfigError

            raise ConfigError(f"task.n_test {cfg.n_test}: chain arithmetic with n_terms {cfg.n_terms} and ops "
                              f"{''.join(sorted(set(cfg.ops)))!r} has only {distinct} distinct problems, and some must "
                              f"be left for training. Ask for at most {distinct - 1} (--set n_test=...), or use more terms.")
        self.cfg = cfg
        self.split = split
        # worked completions are ~6 chars a step; leave room for the marker and answer
        self.max_new_tokens = 6 * (cfg.n_terms - 1) + 8
        rng = random.Random(cfg.data_seed)
        test: list[Problem] = []
        seen: set[str] = set()
        while len(test) < cfg.n_test:
            p = self._make(rng, worked=True)
            if p.prompt not in seen:
                seen.add(p.prompt)
                test.append(p)
        self._test_prompts = seen
        if split == "test":
            problems = test
        else:
            problems = []
            rng = random.Random(cfg.data_seed + 1)
            while len(problems) < cfg.n_demos:
                worked = rng.random() < cfg.worked_fraction
                p = self._make(rng, worked)
                if p.prompt not in seen:
                    problems.append(p)
        super().__init__(problems, seed)

    def _make(self, rng: random.Random, worked: bool) -> Problem:
        n = self.cfg.n_terms
        digits = [rng.randrange(10) for _ in range(n)]
        ops = [rng.choice(self.cfg.ops) for _ in range(n - 1)]
        ans, steps = evaluate_chain(digits, ops, self.cfg.modulus)
        expr = str(digits[0]) + "".join(o + str(d) for o, d in zip(ops, digits[1:]))
        prompt = expr + "="
        sol = (";".join(steps) + ";" if worked else "") + f"#{ans}"
        return Problem(prompt=prompt, answer=str(ans), solution=sol, info={"worked_demo": worked})

    def sample_problems(self, n: int, generator: torch.Generator) -> list[Problem]:
        """Fresh problems for RL (never a held-out one), drawn from ``generator``."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            p = self._make(rng, worked=True)
            if p.prompt not in self._test_prompts:
                out.append(p)
        return out


@TASKS.register("chain_arithmetic", ChainArithmeticConfig)
def make_chain_arithmetic(cfg: ChainArithmeticConfig, split: str = "train", seed: int = 0) -> ChainArithmetic:
    """Left-to-right chains of + and * over digits, mod 10 (the quickstart's slow-thinking task)."""
    return ChainArithmetic(cfg, split, seed)
