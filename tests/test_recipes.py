"""Every recipe in recipes/ smoke-runs (its own ``smoke:`` block: the same pipeline in seconds), its
final policy reopens with the one loader, and each family reports the metrics its README row promises.
A new recipe is covered by adding the file."""

import json
from pathlib import Path

import numpy as np
import pytest

from warmstart.engine.config import load_recipe
from warmstart.engine.run import run_recipe
from warmstart.policies import load_policy

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))

# what each family must report in summary.json's init and final
FAMILY_KEYS = {
    "score": {"acc@t1", "acc@t2", "delta", "delta_i2c", "delta_c2i"},
    "ppo": {"mean_return", "std_return"},
    "pdppo": {"mean_return", "std_return", "mean_cost"},
    "quickstart": {"accuracy", "pass@k", "worked"},
    "search": {"accuracy"},
    "promed": {"accuracy", "questions", "useless_share", "sig_per_question", "coverage", "bayes_oracle"},
    "lid": {"success_rate_seen", "success_rate_unseen", "mean_length_seen", "mean_length_unseen"},
    "unio4": {"mean_return", "normalized_return"},
    "vtoolrl": {"accuracy", "tool_calls_per_episode", "tool_success_rate", "tool_errors"},
    "timemaster": {"accuracy", "accuracy_mean", "accuracy/GunPoint", "accuracy/ArrowHead", "accuracy/ItalyPowerDemand"},
}


def family(name: str) -> str:
    return name.split("-")[0]


def test_every_recipe_has_a_smoke_block_and_description():
    import yaml

    assert RECIPES, "no recipes found"
    for name in RECIPES:
        raw = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
        assert raw.get("smoke"), f"recipes/{name}.yaml has no smoke: block"
        assert raw.get("description"), f"recipes/{name}.yaml has no description"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_smoke(name, tmp_path):
    recipe, raw = load_recipe(ROOT / "recipes" / f"{name}.yaml", smoke=True)
    run_dir = tmp_path / name
    summary = run_recipe(recipe, raw, run_dir=run_dir, smoke=True, quiet=True)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["final"] == json.loads(json.dumps(summary["final"], default=float))
    keys = FAMILY_KEYS.get(family(name), set())
    assert keys <= set(summary["final"]), f"{name}: final lacks {keys - set(summary['final'])}"
    if summary["init"] is not None:
        assert keys <= set(summary["init"])
    for v in summary["final"].values():
        if isinstance(v, float):
            assert np.isfinite(v)
    # the one loader reopens the final policy, whatever its kind
    meta = json.loads((run_dir / "final" / "policy.json").read_text())
    pol = load_policy(run_dir / "final")
    assert type(pol).__name__ == {"lm": "LMPolicy", "mlp": "MLPPolicy", "lid": "LIDPolicy", "vlm": "VLMPolicy"}[meta["kind"]]
    for p in recipe.phases:  # reward models a phase trains are in the run's artifacts store
        if p.kind in ("train_orm", "train_prm"):
            assert (run_dir / "artifacts" / p.kind[-3:] / "reward_head.safetensors").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["phase"] != "eval" for r in rows) and (run_dir / "curves.png").exists()
