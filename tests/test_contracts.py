"""The contracts: requirements checked when a recipe is built, the one policy loader, the artifacts
store, the Gymnasium registration on import, and search sweeps on runs without reward models."""

import subprocess
import sys

import pytest
import torch

from warmstart.artifacts import Artifacts
from warmstart.errors import ConfigError, WarmstartError
from warmstart.policies import load_policy

RECIPE = {
    "name": "t", "seed": 0,
    "task": {"kind": "chain_arithmetic", "n_terms": 3, "n_demos": 20, "n_test": 4},
    "policy": {"kind": "lm", "hidden_size": 32, "num_layers": 2, "max_position": 64},
    "rewards": [{"kind": "exact_answer"}],
    "phases": [{"kind": "multi_turn", "steps": 1}],
}


def test_a_phase_given_the_wrong_kind_of_task_fails_before_anything_runs(tmp_path):
    from warmstart.engine.config import validate_recipe
    from warmstart.engine.run import run_recipe

    r = validate_recipe(RECIPE)
    with pytest.raises(ConfigError, match=r"phase 'multi_turn' \(multi_turn\) needs a multi-turn task .* lacks .*respond"):
        run_recipe(r, RECIPE, run_dir=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    raw = dict(RECIPE, phases=[{"kind": "ppo", "steps": 1}])
    with pytest.raises(ConfigError, match=r"phase 'ppo' \(ppo\) needs a Gymnasium task .* lacks .*make_envs"):
        run_recipe(validate_recipe(raw), raw, run_dir=tmp_path / "run", quiet=True)


def test_import_warmstart_registers_its_gymnasium_env():
    code = "import gymnasium as gym, warmstart; e = gym.make('warmstart/LotSizing-v0'); print(e.reset(seed=0)[0].shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("(")


def test_load_policy_opens_every_kind_and_says_what_is_wrong(tiny_policy_factory, tmp_path):
    import json

    import gymnasium as gym

    from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig

    lm = tiny_policy_factory(seed=0)
    lm.save(tmp_path / "lm")
    assert json.loads((tmp_path / "lm" / "policy.json").read_text())["kind"] == "lm"
    back = load_policy(tmp_path / "lm")
    ids = [[lm.bos_id, 5, 6]]
    assert back.sample(ids, 4, temperature=0.0).ids == lm.sample(ids, 4, temperature=0.0).ids
    mlp = MLPPolicy.from_spaces(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), MLPPolicyConfig(kind="mlp"))
    mlp.save(tmp_path / "mlp")
    assert isinstance(load_policy(tmp_path / "mlp"), MLPPolicy)
    (tmp_path / "lm" / "policy.json").unlink()  # a plain HF directory still opens as an LM
    assert type(load_policy(tmp_path / "lm")).__name__ == "LMPolicy"
    with pytest.raises(WarmstartError, match="is not a directory"):
        load_policy(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WarmstartError, match="not a checkpoint directory"):
        load_policy(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "policy.json").write_text("{not json")
    with pytest.raises(WarmstartError, match="not valid JSON"):
        load_policy(tmp_path / "bad")


def test_artifacts_store_round_trips_every_format_and_survives_a_restart(tmp_path, tiny_policy_factory):
    from warmstart.rewards.models import RewardModel

    root = tmp_path / "artifacts"
    store = Artifacts(root)
    pol = tiny_policy_factory(seed=0)
    rm = RewardModel.from_policy(pol, "prm")
    with torch.no_grad():
        rm.head.bias.fill_(0.25)
    ref = torch.nn.Linear(3, 2)
    store.put("prm", rm)
    store.put("shared_reference", ref)
    store.put("stats", {"n": 3, "w": torch.arange(3)})
    store.put("dataset", tmp_path)
    assert store.names() == ["dataset", "prm", "shared_reference", "stats"]
    # a resumed run: a fresh store over the same directory, nothing in memory
    again = Artifacts(root)
    assert "prm" in again and "nothing" not in again and again.get("nothing", 7) == 7
    rm2 = again.get("prm")
    assert isinstance(rm2, RewardModel) and rm2.kind == "prm" and float(rm2.head.bias.detach()) == 0.25
    like = torch.nn.Linear(3, 2)
    assert again.get("shared_reference", like=like) is like and torch.equal(like.weight, ref.weight)
    assert again.get("stats")["n"] == 3 and torch.equal(again.get("stats")["w"], torch.arange(3))
    assert again.get("dataset") == tmp_path.resolve()
    with pytest.raises(WarmstartError, match="like="):
        Artifacts(root).get("shared_reference")
    # in memory only until a run directory is attached, then written
    mem = Artifacts()
    mem.put("x", [1, 2])
    assert mem.path("x") is None and mem.get("x") == [1, 2]
    mem.attach(tmp_path / "later")
    assert Artifacts(tmp_path / "later").get("x") == [1, 2]


def test_scaling_on_a_run_without_reward_models_skips_and_says_why(tiny_policy_factory, tmp_path):
    from warmstart.engine.search_cli import scaling_main

    tiny_policy_factory(seed=0).save(tmp_path / "run" / "final")
    lines = []
    rows = scaling_main(tmp_path / "run" / "final", "chain_arithmetic", tmp_path / "out.json", budgets=[8], n=3,
                        sets=["n_terms=3", "n_test=3"], log=lines.append)
    skipped = [ln for ln in lines if ln.startswith("skipped")]
    assert {ln.split(":")[0] for ln in skipped} == {"skipped best_of_n", "skipped weighted_vote", "skipped beam",
                                                     "skipped mcts", "skipped revise"}
    assert all("needs a" in ln and "train_" in ln for ln in skipped)
    assert {r["strategy"] for r in rows} == {"greedy", "vote"}
    with pytest.raises(WarmstartError, match="scorer 'prm': it needs a PRM"):
        scaling_main(tmp_path / "run" / "final", "chain_arithmetic", tmp_path / "o2.json", budgets=[8], n=3,
                     sets=["n_terms=3", "n_test=3"], strategies=["beam"], log=lines.append)


def test_search_without_reward_model_runs_unguided_and_says_so(tiny_policy_factory, tmp_path):
    from warmstart.engine.search_cli import search_main

    tiny_policy_factory(seed=0).save(tmp_path / "final")
    lines = []
    row = search_main(tmp_path / "final", "chain_arithmetic", "mcts", 16, n=2, sets=["n_terms=3", "n_test=2"],
                      log=lines.append)
    assert row["scorer"] == "none" and row["n"] == 2
    assert any("scorer 'prm' (the default of mcts) skipped" in ln for ln in lines)
