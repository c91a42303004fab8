"""Terminal progress and tables (rich), metrics.jsonl (always), TensorBoard, MLflow and W&B (optional,
see :mod:`warmstart.engine.tracking`), curves.png."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


def quiet_hf() -> None:
    """Hugging Face prints a progress bar per save; a run saves often."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass

# metrics shown on the progress line when a phase reports them
_SHOWN = ("loss", "reward", "accuracy", "episodic_return", "tokens_per_s", "sps", "kl", "worked")


class _Bar:
    def __init__(self, progress: Progress | None, task_id, keys: tuple[str, ...] = ()):
        self.progress, self.task_id = progress, task_id
        self.keys = tuple(keys) or _SHOWN

    def advance(self, metrics: dict) -> None:
        if self.progress is None:
            return
        shown = []
        for k in self.keys:
            for key, v in metrics.items():
                if (key == k or key.endswith("/" + k)) and isinstance(v, (int, float)):
                    shown.append(f"{key}={v:.4g}")
                    break
        self.progress.update(self.task_id, advance=1, info=" ".join(shown[:4]))


class MetricsLogger:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    ``truncate_to`` cuts the file back to a byte offset recorded in a checkpoint, so that a resumed
    run continues the log exactly where its checkpoint was taken (no duplicate or torn lines)."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, truncate_to: int | None = 0, trackers=None):
        self.trackers = trackers  # MLflow / W&B (engine.tracking.Trackers): every row goes to them too
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists() and truncate_to is not None:  # None: append to the file as it is
            with open(self.path, "r+b") as f:
                f.truncate(truncate_to)
        self._f = open(self.path, "ab")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - depends on the environment
                from warmstart.errors import WarmstartError

                raise WarmstartError(
                    "log.tensorboard is true but TensorBoard is not installed: pip install tensorboard"
                ) from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def write(self, row: dict) -> None:
        clean = {}
        for k, v in row.items():
            if isinstance(v, (torch.Tensor, np.generic)):  # 0-d tensors and numpy scalars
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None if math.isnan(v) else v
            clean[k] = v
        self._f.write((json.dumps(clean, default=str) + "\n").encode())
        if self.trackers is not None:
            self.trackers.log(clean)
        if self._tb is not None and "step" in clean:
            prefix = clean.get("phase", "")
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{prefix}/{k}", v, clean["step"])

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        if self._tb is not None:
            self._tb.flush()

    def bytes_written(self) -> int:
        self._f.flush()
        return self._f.tell()

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()
        if self._tb is not None:
            self._tb.close()

    @contextlib.contextmanager
    def progress(self, label: str, total: int, completed: int = 0, quiet: bool = False, keys: tuple[str, ...] = ()):
        """A progress bar for one phase; ``keys`` are the phase's key metrics shown beside it."""
        if quiet or total == 0:
            yield _Bar(None, None)
            return
        prog = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        with prog:
            tid = prog.add_task(label, total=total, completed=completed, info="")
            yield _Bar(prog, tid, keys)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


# the curves worth a panel, in order of preference; anything else numeric is skipped
_CURVES = (
    "reward", "accuracy", "loss", "loss_policy", "loss_value", "kl", "entropy", "worked",
    "episodic_return", "approx_kl", "clipfrac", "explained_variance", "tokens_per_s", "sps",
)


def plot_curves(run_dir: Path, keys: tuple[str, ...] | list[str] = ()) -> Path | None:
    """Plot the run's main curves (one panel per metric, one line per phase) to ``curves.png``:
    the phases' own key metrics (``keys``) first, then the usual ones."""
    curves = tuple(dict.fromkeys([*keys, *_CURVES]))
    rows = read_metrics(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list]] = {}
    for r in rows:
        phase = r.get("phase", "")
        if phase == "eval":
            phase = "eval"
        for k, v in r.items():
            name = k if k in curves else k.split("/")[-1]
            if name in curves and isinstance(v, (int, float)) and not isinstance(v, bool):
                series.setdefault(k, {}).setdefault(phase, []).append((r["step"], v))

    def rank(k: str) -> tuple:
        return (curves.index(k if k in curves else k.split("/")[-1]), k)

    panels = sorted(series, key=rank)[:12]
    if not panels:
        return None
    n = len(panels)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, panels):
        for phase, pts in series[k].items():
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=phase)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def print_summary_table(summary: dict) -> None:
    """Init vs final table of the evaluation metrics."""
    init, final = summary.get("init") or {}, summary.get("final") or {}
    keys = [k for k in final if isinstance(final.get(k), (int, float)) and not k.endswith("_s") and k not in ("n", "k")]
    table = Table(title=f"{summary.get('recipe')}: evaluation ({summary.get('steps')} steps, {summary.get('time_s')} s)")
    table.add_column("metric")
    table.add_column("init", justify="right")
    table.add_column("final", justify="right")
    table.add_column("change", justify="right")
    for k in keys:
        a, b = init.get(k), final.get(k)
        fa = f"{a:.4g}" if isinstance(a, (int, float)) else "-"
        fb = f"{b:.4g}" if isinstance(b, (int, float)) else "-"
        d = f"{b - a:+.4g}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        table.add_row(k, fa, fb, d)
    console.print(table)
