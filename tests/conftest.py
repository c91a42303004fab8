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
