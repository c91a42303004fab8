import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_policy_factory():
    """Build a fresh tiny Llama policy (hidden 32, 2 layers) with the character tokenizer."""
    from warmstart.policies.lm import LMPolicyConfig, make_lm_policy

    def make(seed: int = 0, **kw):
        cfg = LMPolicyConfig(kind="lm", hidden_size=kw.pop("hidden_size", 32), num_layers=kw.pop("num_layers", 2),
                             num_heads=kw.pop("num_heads", 4), max_position=kw.pop("max_position", 96), **kw)
        return make_lm_policy(cfg, seed=seed)

    return make


class CountingPolicy:
    """Wraps a policy and records how many rows each sampler call gets (``calls``)."""

    def __init__(self, policy):
        self.policy, self.calls = policy, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def sample(self, prompts, *a, **k):
        self.calls.append(len(prompts))
        return self.policy.sample(prompts, *a, **k)


@pytest.fixture(scope="session")
def counting_policy():
    """``counting_policy(policy)``: the policy, recording the batch size of every sampler call."""
    return CountingPolicy


@pytest.fixture(scope="session")
def sums_recipe():
    """``sums_recipe(path, learner_phase)``: a raw recipe on answer-only sums of two digits (``3+4=`` ->
    ``#7``), 60 problems of which only 8 carry a demo. The SFT init teaches the format, not the table
    (near chance); a learner that finds right answers and reinforces them raises accuracy. Accuracy is
    measured on the problems it trains on (a self-improvement test, as in STaR: a 32-wide model
    cannot generalise a sum table from 60 facts)."""
    import json
    import random

    def make(path, learner: dict) -> dict:
        rows = []
        rng = random.Random(0)
        for i in range(60):
            a, b = rng.randrange(10), rng.randrange(10)
            row = {"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)}
            if i < 8:
                row["solution"] = f"#{(a + b) % 10}"
            rows.append(row)
        path.write_text("\n".join(json.dumps(r) for r in rows))
        task = {"kind": "jsonl", "path": str(path), "test_path": str(path), "max_new_tokens": 4}
        return {
            "name": "sums-test", "seed": 0, "task": task,
            "policy": {"kind": "lm", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "max_position": 16},
            "rewards": [{"kind": "exact_answer"}],
            "phases": [{"kind": "sft", "role": "init", "steps": 40, "batch_size": 16, "lr": 5e-3, "warmup": 2}, learner],
            "eval": {"n": 60, "samples": 1, "temperature": 0.0},
            "checkpoint": {"every": 0},
        }

    return make
