"""Bring your own data: a JSONL file of ``{"prompt": ..., "answer": ..., "solution": ...}`` lines.

``solution`` (optional) is a full demonstration completion used by SFT; it should end with the
answer marker and the answer (GSM8K's ``#### 42`` works with the default marker ``#``). The same
verifier as the procedural tasks checks answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import DataError
from warmstart.registry import TASKS
from warmstart.tasks.base import Problem, ReasoningTask


class JsonlTaskConfig(PluginConfig):
    kind: str = "jsonl"
    path: str = Field(description="JSONL file with prompt/answer(/solution) per line (train split)")
    test_path: str | None = Field(None, description="held-out JSONL file; default: the last `test_fraction` of `path`")
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="held-out share when test_path is not given")
    answer_marker: str = Field("#", min_length=1, description="the answer follows the last occurrence of this")
    step_separator: str = Field("\n", description="separates reasoning steps (for step-level search)")
    max_new_tokens: int = Field(256, ge=1, description="generation limit for this task")


def read_jsonl(path: str | Path) -> list[Problem]:
    """Read and check a task file; errors name the file, the line and the missing field."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"task file {str(path)!r} does not exist (task.path). Give a JSONL file with one "
                        '{"prompt": ..., "answer": ...} object per line.')
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{i}: not valid JSON ({e.msg}). Each line must be one JSON object.") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: expected a JSON object with 'prompt' and 'answer', got {type(row).__name__}.")
        missing = [k for k in ("prompt", "answer") if k not in row]
        if missing:
            raise DataError(f"{p}:{i}: missing {', '.join(repr(m) for m in missing)}; each line needs 'prompt' and 'answer' "
                            f"(and optionally 'solution'). Keys found: {', '.join(row) or 'none'}.")
        out.append(Problem(prompt=str(row["prompt"]), answer=str(row["answer"]),
                           solution=None if row.get("solution") is None else str(row["solution"]),
                           info={k: v for k, v in row.items() if k not in ("prompt", "answer", "solution")}))
    if not out:
        raise DataError(f"{p}: no problems in the file.")
    return out


class JsonlTask(ReasoningTask):
    def __init__(self, cfg: JsonlTaskConfig, split: str = "train", seed: int = 0):
        self.answer_marker = cfg.answer_marker
        self.step_separator = cfg.step_separator
        self.max_new_tokens = cfg.max_new_tokens
        rows = read_jsonl(cfg.path)
        if cfg.test_path:
            problems = rows if split == "train" else read_jsonl(cfg.test_path)
        else:
            cut = max(1, int(round(len(rows) * (1 - cfg.test_fraction))))
            problems = rows[:cut] if split == "train" else (rows[cut:] or rows[-1:])
        super().__init__(problems, seed)


@TASKS.register("jsonl", JsonlTaskConfig)
def make_jsonl_task(cfg: JsonlTaskConfig, split: str = "train", seed: int = 0) -> JsonlTask:
    """Your own problems from a JSONL file (prompt, answer, optional solution)."""
    return JsonlTask(cfg, split, seed)
