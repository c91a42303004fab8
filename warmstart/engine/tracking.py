"""Experiment trackers beside metrics.jsonl: MLflow (``log.mlflow``) and Weights & Biases (``log.wandb``).

Each receives the resolved recipe as parameters when the run starts, every metric row as it is
written (keys ``<phase>/<metric>`` at the global step, as in TensorBoard), and at the end the summary
(as final metrics and ``summary.json``) and ``curves.png`` as artifacts.

A tracker is never allowed to hurt the run: the first error from one (a bad URI, a server that is
down, a full disk) prints one warning naming the tracker and what failed, the tracker is switched
off, and training goes on -- ``metrics.jsonl`` holds every number either way. A resumed run continues
the same tracker run (its id is kept in ``<run>/tracking.json``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from warmstart.errors import WarmstartError, warn

IDS_FILE = "tracking.json"
# MLflow retries an unreachable server for minutes by default; a tracker must fail fast, not stall training
_MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [x, y]}`` -> ``{"a.b": 1, "c.0": x, "c.1": y}`` (leaves kept as they are)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and d and any(isinstance(v, (dict, list, tuple)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def metric_items(row: dict) -> tuple[int | None, dict[str, float]]:
    """The global step and the numeric metrics of one metrics.jsonl row, keyed ``<phase>/<name>``."""
    step = row.get("step")
    prefix = row.get("phase", "")
    out = {}
    for k, v in row.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[f"{prefix}/{k}" if prefix else k] = float(v)
    return step, out


def mlflow_key(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics and ``_-. :/``): ``eval/pass@k`` -> ``eval/pass_at_k``."""
    key = key.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


class MlflowTracker:
    """One MLflow run per warmstart run, written with ``MlflowClient`` (no global active run)."""

    name = "MLflow"

    def __init__(self, run_dir: Path, uri: str | None, experiment: str, run_id: str | None, params: dict):
        for k, v in _MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        local = Path(run_dir).resolve() / "mlruns"
        if uri is None:  # SQLite, MLflow's default backend since 3.7 (its file store now needs an opt-in)
            local.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:  # a resumed run continues its MLflow run; its parameters are already there
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            # steps logged after the checkpoint it resumes from are logged again (with equal values: resume is
            # exact); the tag says the run was resumed, and how often
            done = int(self.client.get_run(run_id).data.tags.get("warmstart.resumes", "0"))
            self.client.set_tag(run_id, "warmstart.resumes", str(done + 1))
            return
        exp = self.client.get_experiment_by_name(experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:  # in the run's own store the artifacts go beside it, not into the working directory
            where = (local / "artifacts").as_uri() if uri.startswith(f"sqlite:///{local}") else None
            exp_id = self.client.create_experiment(experiment, artifact_location=where)
        self.run_id = self.client.create_run(exp_id, run_name=Path(run_dir).name,
                                             tags={"warmstart.run_dir": str(Path(run_dir).resolve())}).info.run_id
        items = [Param(mlflow_key(k)[:250], str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log(self, step: int | None, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), v, now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def final(self, summary: dict, files: list[Path]) -> None:
        self.log(summary.get("steps"), {f"final/{k}": v for k, v in flatten(summary.get("final") or {}).items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
        for f in files:
            if Path(f).exists():
                self.client.log_artifact(self.run_id, str(f))

    def end(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class WandbTracker:
    """One W&B run per warmstart run; ``offline`` writes under ``<run>/wandb`` (upload later with ``wandb sync``)."""

    name = "W&B"

    def __init__(self, run_dir: Path, mode: str, project: str, run_id: str | None, params: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=Path(run_dir).name, dir=str(run_dir), mode=mode,
                              config=flatten(params), id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(console="off", silent=True))
        self.run_id = self.run.id

    def log(self, step: int | None, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def final(self, summary: dict, files: list[Path]) -> None:
        final = {f"final/{k}": v for k, v in flatten(summary.get("final") or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.summary.update(final)
        for f in files:
            if Path(f).exists():
                self.run.save(str(f), base_path=str(Path(f).parent), policy="now")

    def end(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class Trackers:
    """The run's trackers behind one fault-isolating front: a tracker that raises is switched off with
    one warning; the run never sees the error."""

    def __init__(self, trackers: list | None = None):
        self.trackers = list(trackers or [])
        self._ended = False

    def __len__(self) -> int:
        return len(self.trackers)

    def _call(self, what: str, fn) -> None:
        for t in list(self.trackers):
            try:
                fn(t)
            except Exception as e:  # any tracker fault: warn once, drop the tracker, keep training
                self.trackers.remove(t)
                warn(f"{t.name} tracking failed while {what} ({type(e).__name__}: {_short(e)}); it is switched off for "
                     "the rest of this run, which goes on: metrics.jsonl and the run directory hold every number.")

    def log(self, row: dict) -> None:
        step, metrics = metric_items(row)
        if metrics:
            self._call(f"logging step {step}", lambda t: t.log(step, metrics))

    def final(self, summary: dict, files: list[Path]) -> None:
        self._call("uploading the summary and curves", lambda t: t.final(summary, files))

    def end(self, ok: bool) -> None:
        if not self._ended:
            self._ended = True
            self._call("closing its run", lambda t: t.end(ok))


def _short(e: Exception, limit: int = 300) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[:limit] + " ..."


def open_trackers(log_cfg, run_dir: Path, recipe_name: str, params: dict, resume: bool) -> Trackers:
    """Start the trackers ``log_cfg`` asks for. A missing package is an error before training starts
    (the recipe asked for it); a tracker that cannot start (bad URI, server down) is a warning."""
    ids_path = Path(run_dir) / IDS_FILE
    ids = json.loads(ids_path.read_text()) if resume and ids_path.exists() else {}
    made, tracker_ids = [], {}
    wanted = []
    if log_cfg.mlflow:
        wanted.append(("mlflow", "MLflow", "mlflow", lambda rid: MlflowTracker(
            run_dir, log_cfg.mlflow_uri, log_cfg.mlflow_experiment or recipe_name, rid, params)))
    if log_cfg.wandb:
        wanted.append(("wandb", "W&B", "wandb", lambda rid: WandbTracker(
            run_dir, log_cfg.wandb, log_cfg.wandb_project or recipe_name, rid, params)))
    for key, label, module, make in wanted:
        try:
            __import__(module)
        except ImportError:
            raise WarmstartError(f"log.{key} is set but {module} is not installed: pip install 'warmstart[tracking]' "
                                 f"(or remove log.{key} from the recipe).") from None
        try:
            t = make(ids.get(key))
        except Exception as e:  # e.g. an unreachable tracking server: the run goes on without it
            warn(f"{label} tracking could not start ({type(e).__name__}: {_short(e)}); the run goes on without it: "
                 "metrics.jsonl and the run directory hold every number.")
            continue
        made.append(t)
        tracker_ids[key] = t.run_id
    if tracker_ids:
        ids_path.write_text(json.dumps({**ids, **tracker_ids}, indent=2))
    return Trackers(made)
