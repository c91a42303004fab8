"""The quickstart benchmarks' own arithmetic: the SFT loss-drop step, the per-phase wall times read
from a run's metrics log, and that the SFT-only probe trains exactly as ``warmstart run`` does."""

import json

import pytest

from benchmarks.quickstart_learning import phase_times
from benchmarks.quickstart_sft_drop import drop_step, sft_curve
from warmstart.engine.config import load_recipe
from warmstart.engine.run import run_recipe


def test_drop_step_is_the_first_window_below_the_threshold():
    losses = [0.2, 0.2, 0.1, 0.1, 0.1]
    # running means over 2 steps end at steps 2..5: 0.20, 0.15, 0.10, 0.10; 0.15 is not below 0.15
    assert drop_step(losses, threshold=0.15, window=2) == 4
    assert drop_step(losses, threshold=0.16, window=2) == 3
    assert drop_step(losses, threshold=0.05, window=2) is None
    assert drop_step([0.1], threshold=0.5, window=2) is None  # shorter than one window


def test_phase_times_sum_steps_and_evaluations(tmp_path):
    rows = [
        {"step": 1, "phase": "sft", "phase_step": 1, "loss": 1.0, "time_step_s": 0.5},
        {"step": 2, "phase": "sft", "phase_step": 2, "loss": 0.9, "time_step_s": 0.25},
        {"step": 2, "phase": "eval", "during": "sft", "eval_time_s": 9.0},  # inside the phase's steps: not counted
        {"step": 2, "phase": "eval", "after": "sft", "accuracy": 0.4, "eval_time_s": 3.0},
        {"step": 3, "phase": "grpo", "phase_step": 1, "reward": 0.5, "time_step_s": 2.0},
        {"step": 3, "phase": "eval", "after": "grpo", "accuracy": 0.9, "eval_time_s": 4.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert phase_times(tmp_path) == {"sft": 0.75, "eval sft": 3.0, "grpo": 2.0, "eval grpo": 4.5}


@pytest.mark.slow
def test_sft_probe_trains_exactly_as_the_run(tmp_path):
    recipe, raw = load_recipe("quickstart", smoke=True)
    summary = run_recipe(recipe, raw, run_dir=tmp_path / "run", quiet=True)
    run_losses = [r["loss"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r.get("phase") == "sft"]
    probe_losses, timing = sft_curve(load_recipe("quickstart", smoke=True)[0])
    assert summary["steps"] > len(run_losses) == recipe.phases[0].steps
    assert probe_losses == run_losses  # same batches, seeds and updates: bit-identical losses
    assert timing["tokens"] > 0
