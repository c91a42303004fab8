"""Recipes: unknown keys, wrong types and missing files stop with one clear message, and nothing
is written to the run directory."""

import subprocess
import sys
from pathlib import Path

import pytest

from warmstart.engine.config import apply_override, load_recipe
from warmstart.errors import ConfigError

GOOD = """\
name: t
seed: 0
task:
  kind: chain_arithmetic
  n_terms: 3
  n_demos: 50
  n_test: 20
policy:
  kind: lm
  hidden_size: 32
  num_layers: 1
rewards:
  - kind: exact_answer
phases:
  - kind: sft
    steps: 2
    batch_size: 4
  - kind: grpo
    steps: 1
    prompts_per_step: 2
    group_size: 2
eval:
  n: 4
  samples: 2
"""


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_recipe_and_overrides(tmp_path):
    r, raw = load_recipe(write(tmp_path, GOOD), ["phases.grpo.lr=1e-4", "phases.0.steps=3", "seed=5"])
    assert r.phases[1].lr == 1e-4 and r.phases[0].steps == 3 and r.seed == 5
    assert raw["phases"][1]["lr"] == 1e-4


def test_unknown_key_names_file_key_line_and_suggestion(tmp_path):
    p = write(tmp_path, GOOD.replace("    batch_size: 4", "    batch_sise: 4"))
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert str(p) in msg and "phases[0].batch_sise" in msg and "line 17" in msg and "Did you mean 'batch_size'" in msg


def test_wrong_type_and_unknown_kind(tmp_path):
    p = write(tmp_path, GOOD.replace("n_terms: 3", "n_terms: many").replace("kind: exact_answer", "kind: exact_answr"))
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "task.n_terms (line 5)" in msg and "valid integer" in msg and "'many'" in msg
    assert "Did you mean 'exact_answer'" in msg


def test_top_level_unknown_and_missing(tmp_path):
    p = write(tmp_path, GOOD.replace("seed: 0", "sed: 0").replace("name: t\n", ""))
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "sed (line" in msg and "Did you mean 'seed'" in msg and "name: required key is missing" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))


def test_bad_override_paths():
    raw = {"phases": [{"kind": "sft"}]}
    with pytest.raises(ConfigError, match="no list entry 'grpo'"):
        apply_override(raw, "phases.grpo.lr", 1.0)
    apply_override(raw, "phases.sft.lr", 1.0)
    assert raw["phases"][0]["lr"] == 1.0


def _cli(*args):
    """The CLI in-process (a new interpreter per call would cost seconds of imports)."""
    from typer.testing import CliRunner

    from warmstart.engine.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_errors_are_one_paragraph_without_traceback_and_write_nothing(tmp_path):
    p = write(tmp_path, GOOD.replace("    steps: 2", "    stepz: 2"))
    run_dir = tmp_path / "run"
    res = _cli("run", str(p), "--run-dir", str(run_dir))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "stepz" in res.output and "Did you mean 'steps'" in res.output
    assert not run_dir.exists()
    res = _cli("run", str(tmp_path / "missing.yaml"), "--run-dir", str(run_dir))
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    # a missing data file is reported before anything is written
    bad = write(tmp_path, GOOD.replace("kind: chain_arithmetic\n  n_terms: 3\n  n_demos: 50\n  n_test: 20", f"kind: jsonl\n  path: {tmp_path}/none.jsonl"), "b.yaml")
    res = _cli("run", str(bad), "--run-dir", str(run_dir))
    assert res.exit_code == 2 and "none.jsonl" in res.output and not run_dir.exists()
    res = _cli("run", str(p), "--resume")
    assert res.exit_code == 2 and "--resume needs --run-dir" in res.output


def test_a_real_subprocess_prints_no_traceback(tmp_path, root):
    p = write(tmp_path, GOOD.replace("seed: 0", "seed: zero"))
    res = subprocess.run([sys.executable, "-m", "warmstart.engine.cli", "run", str(p)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "seed (line 2)" in res.stderr and "Traceback" not in res.stdout + res.stderr


def test_every_shipped_recipe_validates(root):
    for f in sorted((root / "recipes").glob("*.yaml")):
        load_recipe(f)
        load_recipe(f, smoke=True)


def test_recipe_imports_register_user_rewards(tmp_path):
    (tmp_path / "my_rewards_mod.py").write_text(
        "from warmstart.engine.config import RewardConfig\n"
        "from warmstart.registry import REWARDS\n"
        "class ShortConfig(RewardConfig):\n"
        "    kind: str = 'short_answer'\n"
        "    max_chars: int = 3\n"
        "@REWARDS.register('short_answer', ShortConfig)\n"
        "def short(cfg):\n"
        "    return lambda e: float(len(e.text) <= cfg.max_chars)\n"
    )
    text = GOOD.replace("name: t\n", "name: t\nimports: [my_rewards_mod]\n").replace(
        "  - kind: exact_answer", "  - kind: exact_answer\n  - kind: short_answer\n    max_chars: 2")
    r, _ = load_recipe(write(tmp_path, text))
    assert [x.kind for x in r.rewards] == ["exact_answer", "short_answer"] and r.rewards[1].max_chars == 2
    bad = write(tmp_path, GOOD.replace("name: t\n", "name: t\nimports: [no_such_module_xyz]\n"), "bad.yaml")
    with pytest.raises(ConfigError, match="could not import 'no_such_module_xyz'"):
        load_recipe(bad)
