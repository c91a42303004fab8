"""A run is a directory; it resumes after kill -9 with the same numbers; its checkpoints load in HF."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECIPE = """\
name: tiny
seed: 3
task:
  kind: chain_arithmetic
  n_terms: 3
  n_demos: 200
  n_test: 16
policy:
  kind: lm
  hidden_size: 32
  num_layers: 2
  max_position: 64
rewards:
  - kind: exact_answer
phases:
  - kind: sft
    steps: 12
    batch_size: 16
  - kind: grpo
    steps: 6
    prompts_per_step: 4
    group_size: 4
    mu: 2
    beta: 0.05
eval:
  n: 16
  samples: 2
checkpoint:
  every: 4
log:
  tensorboard: true
"""

TIMING = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s"}


def _cli(args, root, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "warmstart.engine.cli", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _rows(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipe")
    p = d / "tiny.yaml"
    p.write_text(RECIPE)
    return p


@pytest.fixture(scope="module")
def full_run(recipe_file, tmp_path_factory):
    """The uninterrupted reference run, in-process."""
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    run_dir = tmp_path_factory.mktemp("runs") / "full"
    r, raw = load_recipe(recipe_file)
    run_recipe(r, raw, run_dir=run_dir, quiet=True)
    return run_dir


def _invoke(*args):
    from typer.testing import CliRunner

    from warmstart.engine.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_run_directory_layout(full_run):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "final/config.json",
                 "final/model.safetensors", "final/tokenizer.json"):
        assert (full_run / name).exists(), name
    assert list((full_run / "tb").glob("events.*")), "tensorboard events"
    summary = json.loads((full_run / "summary.json").read_text())
    rows = _rows(full_run)
    evals = {r["after"]: r for r in rows if r["phase"] == "eval" and "after" in r}
    for part, phase in (("init", "sft"), ("final", "grpo")):  # the summary is what the evaluation logged
        assert summary[part]["accuracy"] == evals[phase]["accuracy"] and summary[part]["n"] == 16
        assert summary[part]["pass@k"] == evals[phase]["pass@k"] >= summary[part]["sample_accuracy"]
    grpo = [r for r in rows if r["phase"] == "grpo"]
    assert len(grpo) == 6 and all("reward/exact_answer" in r and "kl" in r and "entropy" in r for r in grpo)
    steps = sorted(int(d.name.split("-")[1]) for d in (full_run / "checkpoints").glob("step-*"))
    assert steps == [16, 18]  # keep=2 newest; phase ends always checkpoint
    assert not list((full_run / "checkpoints").glob(".tmp*"))


def test_checkpoints_load_with_transformers(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for d in [full_run / "final", *sorted((full_run / "checkpoints").glob("step-*"))]:
        m = AutoModelForCausalLM.from_pretrained(d)
        t = AutoTokenizer.from_pretrained(d)
        assert m.config.model_type == "llama" and t.decode(t("1+2=")["input_ids"]).endswith("1+2=")


def test_resume_after_kill_9_gives_identical_metrics(full_run, recipe_file, root, tmp_path):
    run_dir = tmp_path / "killed"
    p = _cli(["run", str(recipe_file), "--run-dir", str(run_dir), "--quiet"], root)
    # kill -9 as soon as the second checkpoint exists (mid-SFT), wherever the process is
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "checkpoints" / "step-8").exists():
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (run_dir / "summary.json").exists()
    r = _cli(["run", str(recipe_file), "--run-dir", str(run_dir), "--resume", "--quiet"], root)
    out, _ = r.communicate(timeout=300)
    assert r.returncode == 0, out
    assert _rows(run_dir) == _rows(full_run)
    a = json.loads((run_dir / "summary.json").read_text())
    b = json.loads((full_run / "summary.json").read_text())
    assert a["final"]["accuracy"] == b["final"]["accuracy"] and a["final"]["pass@k"] == b["final"]["pass@k"]


def test_existing_run_dir_is_never_overwritten(full_run, recipe_file):
    before = (full_run / "metrics.jsonl").read_bytes()
    res = _invoke("run", recipe_file, "--run-dir", full_run, "--quiet")
    assert res.exit_code == 2 and "already holds a run" in res.output and "Traceback" not in res.output
    assert (full_run / "metrics.jsonl").read_bytes() == before


def test_resume_with_a_different_recipe_is_refused(full_run, recipe_file):
    res = _invoke("run", recipe_file, "--run-dir", full_run, "--resume", "--set", "seed=4", "--quiet")
    assert res.exit_code == 2 and "recipe differs" in res.output


def test_eval_command(full_run):
    res = _invoke("eval", full_run / "final", "--task", "chain_arithmetic", "--set", "n_terms=3", "--n", "8", "--samples", "2")
    assert res.exit_code == 0, res.output
    m = json.loads((full_run / "final" / "eval-chain_arithmetic.json").read_text())
    assert m["n"] == 8 and "accuracy" in m and "pass@k" in m
