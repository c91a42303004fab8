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
    max_line_bytes: int = Field(1 << 20, ge=64, description="longest line read from the file (a longer one is an error naming its line)")


def read_jsonl(path: str | Path, max_line_bytes: int = 1 << 20, with_lines: bool = False):
    """Read and check a task file; errors name the file, the line and the missing field.

    The file is read line by line, each line at most ``max_line_bytes`` (a huge line is an error,
    not an out-of-memory crash). ``prompt`` and ``answer`` must be strings or numbers (a null answer
    is an error, not the string "None"). With ``with_lines`` also returns each problem's line number."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"task file {str(path)!r} does not exist (task.path). Give a JSONL file with one "
                        '{"prompt": ..., "answer": ...} object per line.')
    if p.is_dir():
        raise DataError(f"task file {p} is a directory (task.path); give the JSONL file inside it.")
    out, lines = [], []
    with open(p, "rb") as f:
        i = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                break
            i += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                raise DataError(f"{p}:{i}: the line is longer than {max_line_bytes} bytes (task.max_line_bytes). "
                                "One problem per line is expected; raise task.max_line_bytes if it really is one.")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{p}:{i}: not UTF-8 text (byte {raw[e.start]:#x} at column {e.start + 1}). "
                                "Save the file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{i}: not valid JSON ({e.msg}). Each line must be one JSON object.") from None
            except RecursionError:
                raise DataError(f"{p}:{i}: the JSON is nested too deeply. Each line must be one flat object.") from None
            if not isinstance(row, dict):
                raise DataError(f"{p}:{i}: expected a JSON object with 'prompt' and 'answer', got {type(row).__name__}.")
            missing = [k for k in ("prompt", "answer") if k not in row]
            if missing:
                raise DataError(f"{p}:{i}: missing {', '.join(repr(m) for m in missing)}; each line needs 'prompt' and 'answer' "
                                f"(and optionally 'solution'). Keys found: {', '.join(row) or 'none'}.")
            for k in ("prompt", "answer", "solution"):
                v = row.get(k)
                if (v is None and k != "solution") or isinstance(v, (dict, list, bool)):
                    raise DataError(f"{p}:{i}: '{k}' is {json.dumps(v)[:60]}; it must be a string"
                                    f"{' or a number' if k == 'answer' else ''}.")
            if not str(row["prompt"]).strip():
                raise DataError(f"{p}:{i}: 'prompt' is empty.")
            out.append(Problem(prompt=str(row["prompt"]), answer=str(row["answer"]),
                               solution=None if row.get("solution") is None else str(row["solution"]),
                               info={k: v for k, v in row.items() if k not in ("prompt", "answer", "solution")}))
            lines.append(f"{p}:{i}")
    if not out:
        raise DataError(f"{p}: no problems in the file.")
    return (out, lines) if with_lines else out


class JsonlTask(ReasoningTask):
    """Problems from a JSONL file; ``sources[i]`` is ``file:line`` of ``problems[i]`` (for errors)."""

    def __init__(self, cfg: JsonlTaskConfig, split: str = "train", seed: int = 0):
        self.answer_marker = cfg.answer_marker
        self.step_separator = cfg.step_separator
        self.max_new_tokens = cfg.max_new_tokens
        rows, where = read_jsonl(cfg.path, cfg.max_line_bytes, with_lines=True)
        if cfg.test_path:
            if split != "train":
                rows, where = read_jsonl(cfg.test_path, cfg.max_line_bytes, with_lines=True)
            problems, self.sources = rows, where
        else:
            cut = max(1, int(round(len(rows) * (1 - cfg.test_fraction))))
            sl = slice(None, cut) if split == "train" else (slice(cut, None) if rows[cut:] else slice(-1, None))
            problems, self.sources = rows[sl], where[sl]
        super().__init__(problems, seed)


@TASKS.register("jsonl", JsonlTaskConfig)
def make_jsonl_task(cfg: JsonlTaskConfig, split: str = "train", seed: int = 0) -> JsonlTask:
    """Your own problems from a JSONL file (prompt, answer, optional solution)."""
    return JsonlTask(cfg, split, seed)
