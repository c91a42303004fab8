"""Experiment tracking (issue 16 part 5): MLflow and W&B beside metrics.jsonl, read back with their own
APIs; a tracker that fails never stops or corrupts the run. Skips, saying why, when a package is absent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from warmstart.engine.config import load_recipe
from warmstart.engine.run import run_recipe
from warmstart.engine.tracking import flatten, metric_items, mlflow_key

TINY = (Path(__file__).parent / "fault_tiny.yaml").read_text()
TIMING = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s"}


def rows(run_dir):
    out = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in out]


def run(tmp, name, *sets):
    p = tmp / "tiny.yaml"
    p.write_text(TINY)
    recipe, raw = load_recipe(p, overrides=list(sets))
    summary = run_recipe(recipe, raw, run_dir=tmp / name, quiet=True)
    return summary, tmp / name


def test_flatten_and_metric_items_by_hand():
    assert flatten({"a": {"b": 1}, "c": [{"d": 2}], "e": [1, 2], "f": None}) == {"a.b": 1, "c.0.d": 2, "e": [1, 2], "f": None}
    step, m = metric_items({"step": 3, "phase": "grpo", "reward": 0.5, "n": 2, "ok": True, "x": "s", "nan": float("nan")})
    assert step == 3 and m == {"grpo/reward": 0.5, "grpo/n": 2.0}
    assert mlflow_key("eval/pass@k") == "eval/pass_at_k" and mlflow_key("a/b c:d-e.f") == "a/b c:d-e.f"
    assert mlflow_key("reward/f(x)") == "reward/f_x_"


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'warmstart[tracking]')")
    tmp = tmp_path_factory.mktemp("mlflow")
    summary, run_dir = run(tmp, "run", "log.mlflow=true")
    return summary, run_dir


@pytest.mark.slow
def test_mlflow_run_holds_params_every_metric_and_the_artifacts(mlflow_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    summary, run_dir = mlflow_run
    uri = f"sqlite:///{run_dir.resolve() / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=["tiny-faults"])
    assert len(df) == 1
    r = df.iloc[0]
    assert r["status"] == "FINISHED"
    assert r["params.seed"] == "5" and r["params.phases.1.kind"] == "grpo" and r["params.policy.hidden_size"] == "16"
    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert r["run_id"] == run_id
    # every metric of metrics.jsonl, at its step, with its value
    logged = rows(run_dir)
    for key, phase in (("loss", "sft"), ("reward", "grpo"), ("accuracy", "grpo")):
        want = [(x["step"], x[key]) for x in logged if x.get("phase") == phase]
        got = [(m.step, m.value) for m in client.get_metric_history(run_id, f"{phase}/{key}")]
        assert sorted(got) == sorted((s, float(v)) for s, v in want), key
    assert r["metrics.final/accuracy"] == pytest.approx(summary["final"]["accuracy"])
    evals = [x for x in logged if x.get("phase") == "eval"]
    got = [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/pass_at_k")]
    assert sorted(got) == sorted((x["step"], float(x["pass@k"])) for x in evals) and got
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "curves.png"} <= names
    local = Path(client.download_artifacts(run_id, "summary.json", str(run_dir.parent)))
    assert json.loads(local.read_text())["final"] == json.loads((run_dir / "summary.json").read_text())["final"]


@pytest.mark.slow
def test_a_tracker_failing_mid_run_warns_and_the_run_goes_on_unchanged(mlflow_run, tmp_path, monkeypatch, capfd):
    from warmstart.engine import tracking

    _, ref_dir = mlflow_run
    calls = []

    def flaky(self, step, metrics):
        calls.append(step)
        if len(calls) == 3:
            raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracking.MlflowTracker, "log", flaky)
    uri = f"sqlite:///{ref_dir.resolve() / 'mlruns' / 'mlflow.db'}"  # already created: no slow migration
    summary, run_dir = run(tmp_path, "run", "log.mlflow=true", f"log.mlflow_uri={uri}")
    err = capfd.readouterr().err
    assert "MLflow tracking failed while logging step" in err and "tracking server went away" in err
    assert "switched off" in err and "Traceback" not in err
    assert len(calls) == 3  # switched off after the first failure
    assert rows(run_dir) == rows(ref_dir)  # the run's own record is complete and unchanged
    assert (run_dir / "final").is_dir() and summary["final"] is not None


def test_an_unreachable_tracking_server_is_a_warning_not_a_failure(tmp_path, capfd):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'warmstart[tracking]')")
    t0 = time.time()
    summary, run_dir = run(tmp_path, "run", "log.mlflow=true", "log.mlflow_uri=http://127.0.0.1:9")
    err = capfd.readouterr().err
    assert "MLflow tracking could not start" in err and "the run goes on without it" in err
    assert (run_dir / "summary.json").exists() and summary["final"] is not None
    assert time.time() - t0 < 120


@pytest.mark.slow
def test_wandb_offline_run_holds_config_metrics_and_files(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'warmstart[tracking]')")
    summary, run_dir = run(tmp_path, "run", "log.wandb=offline")
    run_id = json.loads((run_dir / "tracking.json").read_text())["wandb"]
    (offline,) = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    files = offline / "files"
    assert (files / "summary.json").exists() and (files / "curves.png").exists()
    # the offline run's record log (protobuf records, read by `wandb sync`; wandb ships no reader for it):
    # every key it was given, with its JSON value, is in it as text
    path = next(offline.glob("run-*.wandb"))
    keys = (b"grpo/reward", b"sft/loss", b"eval/accuracy", b"final/accuracy", b"policy.hidden_size", b"phases.1.kind")
    deadline = time.time() + 90  # wandb's service writes the log behind run.finish(): wait for it
    while not all(k in path.read_bytes() for k in keys) and time.time() < deadline:
        time.sleep(1)
    log = path.read_bytes()
    last = [x for x in rows(run_dir) if x.get("phase") == "grpo"][-1]
    for key in keys:
        assert key in log, key
    assert json.dumps(summary["final"]["accuracy"]).encode() in log
    assert json.dumps(last["loss"]).encode() in log


@pytest.mark.slow
def test_an_interrupted_and_resumed_run_continues_its_mlflow_run(mlflow_run, tmp_path, monkeypatch):
    """What a user expects of ``--resume`` with ``log.mlflow``: ONE MLflow run (the same run id), FAILED while
    interrupted and FINISHED at the end, tagged ``warmstart.resumes``; every step's metrics in it equal the
    uninterrupted run's. The steps between the checkpoint and the interruption are logged twice, with equal
    values (resume is exact), so MLflow's curves are those of a run that never stopped."""
    from mlflow.tracking import MlflowClient

    from warmstart.engine import logging as log_mod
    from warmstart.errors import WarmstartError

    _, ref_dir = mlflow_run
    uri = f"sqlite:///{ref_dir.resolve() / 'mlruns' / 'mlflow.db'}"  # already migrated: no slow schema set-up
    sets = ["log.mlflow=true", f"log.mlflow_uri={uri}", "log.mlflow_experiment=tiny-resume"]
    client = MlflowClient(tracking_uri=uri)  # the experiment's artifacts in tmp (MLflow's default: ./mlruns)
    client.create_experiment("tiny-resume", artifact_location=(tmp_path / "artifacts").as_uri())
    real_write = log_mod.MetricsLogger.write

    def write_then_interrupt(self, row):  # Ctrl-C right after SFT step 5 is logged (the checkpoint is step 4)
        real_write(self, row)
        if row.get("phase") == "sft" and row.get("step") == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(log_mod.MetricsLogger, "write", write_then_interrupt)
    with pytest.raises(WarmstartError, match="interrupted at global step 5"):
        run(tmp_path, "run", *sets)
    run_dir = tmp_path / "run"
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "sft/loss")] == [1, 2, 3, 4, 5]

    monkeypatch.setattr(log_mod.MetricsLogger, "write", real_write)
    p = tmp_path / "tiny.yaml"
    recipe, raw = load_recipe(p, overrides=sets)
    summary = run_recipe(recipe, raw, run_dir=run_dir, resume=True, quiet=True)
    assert json.loads((run_dir / "tracking.json").read_text())["mlflow"] == run_id
    exp = client.get_experiment_by_name("tiny-resume")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]  # one run, not a second one for the resumed part
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.tags["warmstart.resumes"] == "1"
    assert rows(run_dir) == rows(ref_dir)  # the resume is exact
    for key, phase in (("loss", "sft"), ("reward", "grpo")):
        want = sorted((x["step"], float(x[key])) for x in rows(run_dir) if x.get("phase") == phase)
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"{phase}/{key}"))
        assert sorted(set(got)) == want, key  # every step, with the uninterrupted run's value
        if phase == "sft":  # step 5 twice (before the interruption and after the resume), equal values
            assert [s for s, _ in got].count(5) == 2 and len(got) == len(want) + 1
    assert r.data.metrics["final/accuracy"] == pytest.approx(summary["final"]["accuracy"])
