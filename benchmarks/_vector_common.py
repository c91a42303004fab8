"""Shared helpers for the vector-policy benchmarks (not part of the package)."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load_average() -> str:
    """The 1/5/15-minute load averages, for tables measured on a shared machine."""
    import os

    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def run(recipe: str, sets: list[str], run_dir: Path) -> tuple[dict, list[dict]]:
    """Run a shipped recipe with overrides (fresh run dir); returns (summary, training rows)."""
    import shutil

    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    shutil.rmtree(run_dir, ignore_errors=True)
    r, raw = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", sets)
    summary = run_recipe(r, raw, run_dir=run_dir, quiet=True)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, [x for x in rows if x.get("phase") != "eval"]


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(out)
