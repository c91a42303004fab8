"""``warmstart eval``: load a saved policy and evaluate it on a task's held-out split."""

from __future__ import annotations

from pathlib import Path

from warmstart.engine.config import EvalConfig, apply_override, load_recipe, parse_value
from warmstart.errors import ConfigError, WarmstartError
from warmstart.policies import load_policy
from warmstart.registry import TASKS
from warmstart.rollout.evaluate import evaluate


def build_task(task: str, sets: list[str] | None = None, turns: int | None = None):
    """A held-out task from a kind (``chain_arithmetic``), a JSONL file or a recipe YAML (its eval
    task), with ``--set KEY=VALUE`` options and, for multi-turn tasks, ``turns`` attempts.
    Returns the task and a label for it."""
    p = Path(task)
    if p.suffix in (".yaml", ".yml"):  # the recipe's (eval) task; --set changes its options
        recipe, _ = load_recipe(p)
        raw = (recipe.eval_task or recipe.task).model_dump()
        label = recipe.name
    else:
        raw = {"kind": "jsonl", "path": str(p)} if p.suffix == ".jsonl" else {"kind": task}
        label = p.stem if p.suffix == ".jsonl" else task
    for s in sets or []:
        if "=" not in s:
            raise ConfigError(f"--set {s!r}: expected KEY=VALUE, e.g. --set n_terms=9")
        k, v = s.split("=", 1)
        apply_override(raw, k, parse_value(v))
    entry = TASKS.get(raw["kind"])
    if turns is not None:
        if "max_turns" not in entry.config.model_fields:
            raise ConfigError(f"--turns {turns}: task '{raw['kind']}' is single-turn. Use a multi-turn task, e.g. "
                              "--task self_correct_arithmetic (two attempts at chain arithmetic).")
        raw["max_turns"] = turns
    try:
        tcfg = entry.config.model_validate(raw)
    except Exception as e:  # pydantic ValidationError -> readable
        if isinstance(e, WarmstartError):
            raise
        raise ConfigError(f"--task {task}: invalid task options: {e}") from None
    return entry.factory(tcfg, split="test", seed=0), label


def evaluate_checkpoint(checkpoint: Path, task: str, ev: EvalConfig, sets: list[str], turns: int | None = None) -> tuple[dict, str]:
    """Build the task named by ``task`` (kind, JSONL path or recipe), load the checkpoint, evaluate
    (with ``turns`` attempts per problem when the task is multi-turn)."""
    if not Path(checkpoint).is_dir():
        raise WarmstartError(f"checkpoint {str(checkpoint)!r} is not a directory.")
    task_obj, label = build_task(task, sets, turns)
    policy = load_policy(checkpoint)
    return evaluate(policy, task_obj, ev), label
