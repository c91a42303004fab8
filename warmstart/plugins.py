"""Imports every module that registers tasks, policies, phases and rewards.

Adding a method: create its modules and list them here (one line each).
"""

import importlib

MODULES = [
    "warmstart.tasks.arithmetic",
    "warmstart.tasks.jsonl",
    "warmstart.policies.lm",
    "warmstart.rewards.builtin",
    "warmstart.init.sft",
    "warmstart.learn.grpo",
    "warmstart.rewards.models",
    "warmstart.learn.from_search",
    "warmstart.tasks.self_correct",
    "warmstart.learn.multi_turn",
]

# Modules written by later work; listed here when they exist so the registry knows them.
OPTIONAL_MODULES = [
    "warmstart.tasks.gym",
    "warmstart.tasks.lotsizing",
    "warmstart.policies.mlp",
    "warmstart.learn.ppo",
]

_loaded = False


def load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for m in MODULES:
        importlib.import_module(m)
    for m in OPTIONAL_MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:
                raise
