"""``warmstart eval``: load a saved policy and evaluate it on a task's held-out split."""

from __future__ import annotations

from pathlib import Path

from warmstart.engine.config import EvalConfig, apply_override, load_recipe, parse_value
from warmstart.errors import ConfigError, WarmstartError
from warmstart.registry import POLICIES, TASKS


def _load_policy(checkpoint: Path, task):
    """An HF model directory loads as an LM policy; other policies write ``policy.json`` with their
    ``kind`` and provide ``load(dir)`` on their registered factory."""
    import json

    ckpt = Path(checkpoint)
    if (ckpt / "config.json").exists():
        from warmstart.policies.lm import LMPolicy

        return LMPolicy.from_pretrained(ckpt, use_chat_template=True)
    meta = ckpt / "policy.json"
    if meta.exists():
        kind = json.loads(meta.read_text()).get("kind")
        loader = getattr(POLICIES.get(kind).factory, "load", None)
        if loader is None:
            raise WarmstartError(f"policy kind {kind!r} cannot be loaded from a directory (no load()).")
        return loader(ckpt)
    raise WarmstartError(f"{ckpt} is not a checkpoint directory (no config.json or policy.json). "
                         "Pass a run's final/ or checkpoints/step-N/.")


def evaluate_checkpoint(checkpoint: Path, task: str, ev: EvalConfig, sets: list[str], turns: int | None = None) -> tuple[dict, str]:
    """Build the task named by ``task`` (kind, JSONL path or recipe), load the checkpoint, evaluate
    (with ``turns`` attempts per problem when the task is multi-turn)."""
    if not Path(checkpoint).is_dir():
        raise WarmstartError(f"checkpoint {str(checkpoint)!r} is not a directory.")
    p = Path(task)
    if p.suffix in (".yaml", ".yml"):
        recipe, _ = load_recipe(p)
        tcfg = recipe.eval_task or recipe.task
        label = recipe.name
    else:
        raw = {"kind": "jsonl", "path": str(p)} if p.suffix == ".jsonl" else {"kind": task}
        for s in sets:
            if "=" not in s:
                raise ConfigError(f"--set {s!r}: expected KEY=VALUE, e.g. --set n_terms=9")
            k, v = s.split("=", 1)
            apply_override(raw, k, parse_value(v))
        entry = TASKS.get(raw["kind"])
        try:
            tcfg = entry.config.model_validate(raw)
        except Exception as e:  # pydantic ValidationError -> readable
            raise ConfigError(f"--task {task}: invalid task options: {e}") from None
        label = p.stem if p.suffix == ".jsonl" else task
    if turns is not None:
        if "max_turns" not in type(tcfg).model_fields:
            raise ConfigError(f"--turns {turns}: task '{tcfg.kind}' is single-turn. Use a multi-turn task, e.g. "
                              "--task self_correct_arithmetic (two attempts at chain arithmetic).")
        tcfg = tcfg.model_copy(update={"max_turns": turns})
    task_obj = TASKS.get(tcfg.kind).factory(tcfg, split="test", seed=0)
    policy = _load_policy(checkpoint, task_obj)
    return task_obj.evaluate(policy, ev, None), label
