"""MLP policies, PPO/PDPPO and the vector recipes: heads against torch.distributions, save/load,
"it learned" on CartPole, a smoke run of every vector recipe, and exact resume."""

import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch

from warmstart.engine.config import load_recipe
from warmstart.engine.run import run_recipe
from warmstart.errors import WarmstartError
from warmstart.learn.ppo import PPOConfig, PPOPhase
from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig
from warmstart.tasks.gym import GymTask, GymTaskConfig

ROOT = Path(__file__).resolve().parents[1]
VECTOR_RECIPES = ["ppo-cartpole", "ppo-lotsizing", "pdppo-lotsizing"]
TIMING = {"sps", "time_rollout_s", "time_update_s", "time_step_s", "eval_time_s"}


def _policy(action_space, **kw):
    obs_space = gym.spaces.Box(-1, 1, (5,), np.float32)
    torch.manual_seed(0)
    return MLPPolicy.from_spaces(obs_space, action_space, MLPPolicyConfig(kind="mlp", hidden=[16], **kw))


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Discrete(3, start=-1), gym.spaces.MultiDiscrete([3, 2, 4]), gym.spaces.MultiDiscrete([4, 4]),
     gym.spaces.Box(-2.0, 2.0, (2,), np.float32)],
    ids=["discrete", "multidiscrete-ragged", "multidiscrete", "box"],
)
def test_vector_policy_heads_match_torch_distributions(space):
    pol = _policy(space)
    x = torch.randn(64, 5)
    a, logp = pol.sample(x)
    logp2, ent = pol.evaluate_actions(x, a)
    assert torch.allclose(logp, logp2, atol=1e-5)
    if isinstance(space, gym.spaces.Box):
        d = torch.distributions.Normal(pol.actor(x), pol.log_std.exp())
        assert torch.allclose(logp, d.log_prob(a).sum(-1), atol=1e-4)
        assert torch.allclose(ent, d.entropy().sum(-1), atol=1e-5)
        assert pol.predict(np.random.randn(3, 5).astype(np.float32) * 100).max() <= 2.0
        return
    flat = pol.actor(x)
    nvec = [space.n] if isinstance(space, gym.spaces.Discrete) else space.nvec.tolist()
    start = np.atleast_1d(space.start)
    acts = a.unsqueeze(-1) if isinstance(space, gym.spaces.Discrete) else a
    want_lp, want_ent, off = 0, 0, 0
    for m, n in enumerate(nvec):
        d = torch.distributions.Categorical(logits=flat[:, off : off + n])
        want_lp = want_lp + d.log_prob(acts[:, m] - int(start[m]))
        want_ent = want_ent + d.entropy()
        off += n
    assert torch.allclose(logp, want_lp, atol=1e-5)
    assert torch.allclose(ent, want_ent, atol=1e-5)
    assert all(space.contains(np.asarray(v, dtype=space.dtype)) for v in a.numpy())


def test_vector_policy_save_load_roundtrip(tmp_path):
    pol = _policy(gym.spaces.MultiDiscrete([3, 2]), normalize_obs=True, post_critic=True)
    pol.obs_rms.update(torch.randn(100, 5) * 3 + 1)
    pol.save(tmp_path)
    back = MLPPolicy.load(tmp_path)
    obs = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    assert np.array_equal(pol.predict(obs), back.predict(obs))
    x = pol.normalize_obs(torch.from_numpy(obs))
    assert torch.equal(x, back.normalize_obs(torch.from_numpy(obs)))
    assert torch.equal(pol.post_value(x), back.post_value(x))
    assert json.loads((tmp_path / "policy.json").read_text())["config"]["post_critic"] is True


@pytest.mark.slow
def test_vector_ppo_learns_cartpole():
    torch.set_num_threads(1)
    task = GymTask(GymTaskConfig(kind="gym", env_id="CartPole-v1"))
    torch.manual_seed(0)
    pol = MLPPolicy.from_spaces(task.observation_space, task.action_space, MLPPolicyConfig(kind="mlp"))
    cfg = PPOConfig(kind="ppo", steps=60, num_envs=8, num_steps=32, lr=1e-3, gamma=0.98, gae_lambda=0.8,
                    update_epochs=10, num_minibatches=1, ent_coef=0.0)
    phase = PPOPhase(cfg, SimpleNamespace(policy=pol, task=task, seed=0))
    phase.on_start(0)
    rows = []
    for i in range(cfg.steps):
        torch.manual_seed(i)
        rows.append(phase.step(i, i))
    first = rows[2]["episodic_return"]
    last = rows[-1]["episodic_return"]
    assert first < 40  # random CartPole lasts ~22 steps
    assert last > 120, f"episodic return only went from {first:.1f} to {last:.1f} in {rows[-1]['env_steps']} env steps"
    assert all(np.isfinite(r["loss_value"]) and 0 <= r["clipfrac"] <= 1 for r in rows)


def test_vector_run_logs_ppo_debug_metrics(tmp_path):
    recipe, raw = load_recipe(ROOT / "recipes" / "ppo-lotsizing.yaml", ["phases.0.steps=2", "eval.n=3"], smoke=True)
    summary = run_recipe(recipe, raw, run_dir=tmp_path / "run", smoke=True, quiet=True)
    assert summary["final"]["mean_cost"] == pytest.approx(-summary["final"]["mean_return"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["phase"] != "eval"]
    assert {"approx_kl", "clipfrac", "explained_variance", "episodic_return", "sps", "loss_policy",
            "loss_value", "entropy"} <= set(train[-1])


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("name", ["ppo-cartpole", "pdppo-lotsizing"])
def test_vector_resume_is_exact(name, tmp_path, monkeypatch):
    sets = ["phases.0.steps=5", "checkpoint.every=2", "eval.n=3"]
    recipe, raw = load_recipe(ROOT / "recipes" / f"{name}.yaml", sets, smoke=True)
    run_recipe(recipe, raw, run_dir=tmp_path / "straight", quiet=True)

    real_step = PPOPhase.step

    def crash_at_4(self, step, global_step):
        if global_step == 3:  # after the checkpoint at step 2 and one more step
            raise KeyboardInterrupt
        return real_step(self, step, global_step)

    monkeypatch.setattr(PPOPhase, "step", crash_at_4)
    recipe, raw = load_recipe(ROOT / "recipes" / f"{name}.yaml", sets, smoke=True)
    with pytest.raises(WarmstartError, match="interrupted"):
        run_recipe(recipe, raw, run_dir=tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(PPOPhase, "step", real_step)
    recipe, raw = load_recipe(ROOT / "recipes" / f"{name}.yaml", sets, smoke=True)
    run_recipe(recipe, raw, run_dir=tmp_path / "resumed", resume=True, quiet=True)

    straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert len(straight) == len(resumed) == 6  # 5 steps + the final eval
    assert straight == resumed
