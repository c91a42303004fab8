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


@pytest.mark.parametrize("name", ["ppo-cartpole", "pdppo-lotsizing", "pdppo-lotsizing-paper"])
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


# ------------------------------------------------- the PDPPO paper's targets (issue 17), hand-computed


def _roll(rewards, ended, values, **extra):
    from warmstart.episode import Transitions

    r = torch.tensor(rewards, dtype=torch.float32)
    zeros = torch.zeros_like(r)
    return Transitions(obs=torch.zeros((*r.shape, 2)), actions=torch.zeros(r.shape, dtype=torch.long),
                       logprobs=zeros, rewards=r, terminated=zeros, truncated=torch.tensor(ended, dtype=torch.float32),
                       values=torch.tensor(values, dtype=torch.float32), last_obs=torch.zeros(r.shape[1], 2),
                       extra=dict(extra))


def test_vector_ppo_mc_targets_hand_computed():
    from warmstart.learn.ppo import advantages

    # one env, 4 steps, the episode ends after step 3 (t = 2); gamma 0.5, no bootstrap anywhere:
    # G = [1 + .5*2 + .25*3, 2 + .5*3, 3, 4] = [2.75, 3.5, 3, 4]; mean 3.3125,
    # unbiased std sqrt(((-.5625)^2 + .1875^2 + (-.3125)^2 + .6875^2) / 3) = sqrt(0.921875 / 3) = 0.554339
    cfg = PPOConfig(kind="ppo", targets="mc", gamma=0.5)
    roll = _roll([[1.0], [2.0], [3.0], [4.0]], [[0.0], [0.0], [1.0], [0.0]], [[0.5], [-0.5], [0.0], [1.0]],
                 next_values=torch.full((4, 1), 99.0))  # ignored: Monte-Carlo, no bootstrap
    adv, ret = advantages(roll, cfg)
    want = (torch.tensor([2.75, 3.5, 3.0, 4.0]) - 3.3125) / 0.554339
    assert torch.allclose(ret[:, 0], want, atol=1e-4)
    assert torch.allclose(adv[:, 0], want - torch.tensor([0.5, -0.5, 0.0, 1.0]), atol=1e-4)


def test_vector_pdppo_combined_value_loss_trains_only_the_min_critic():
    """critic_target: combined -- loss 0.5 (min(V, V_post) - G)^2; the critic that is not the min
    gets no gradient (so Adam leaves it unchanged), and the logged loss is that number."""
    from warmstart.learn.ppo import update

    pol = _policy(gym.spaces.MultiDiscrete([3, 3]), post_critic=True)
    with torch.no_grad():
        pol.post_critic[-1].bias.fill_(10.0)  # V_post >> V: the min is V(s) on every sample
    x, px = torch.randn(2, 3, 5), torch.randn(2, 3, 5)  # (T, N, obs)
    with torch.no_grad():
        a, logp = pol.sample(x.reshape(6, 5))
        v, vp = pol.value(x.reshape(6, 5)), pol.post_value(px.reshape(6, 5))
    ret = torch.randn(2, 3)
    b = torch.minimum(v, vp).reshape(2, 3)
    from warmstart.episode import Transitions

    roll = Transitions(obs=x, actions=a.reshape(2, 3, 2), logprobs=logp.reshape(2, 3), rewards=torch.zeros(2, 3),
                       terminated=torch.zeros(2, 3), truncated=torch.zeros(2, 3), values=b, last_obs=x[-1],
                       extra={"post_obs": px, "post_values": vp.reshape(2, 3), "state_values": v.reshape(2, 3)})
    cfg = PPOConfig(kind="ppo", critic="dual", critic_target="combined", targets="mc", num_minibatches=1,
                    update_epochs=1, clip_vloss=False, norm_adv=False)
    before = {k: t.clone() for k, t in pol.state_dict().items()}
    opt = torch.optim.Adam(pol.parameters(), lr=1e-2)
    out = update(pol, opt, roll, ret - b, ret, cfg)
    assert out["loss_value"] == pytest.approx(float(0.5 * ((v.reshape(2, 3) - ret) ** 2).mean()), rel=1e-5)
    assert "loss_value_post" not in out
    after = pol.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("post_critic."))
    assert not torch.equal(before["critic.0.weight"], after["critic.0.weight"])


def test_vector_ppo_keep_best_restores_the_best_rollouts_weights():
    task = GymTask(GymTaskConfig(kind="gym", env_id="warmstart/LotSizing-v0", env_kwargs={"preset": "paper-5x2"}))
    torch.manual_seed(0)
    pol = MLPPolicy.from_spaces(task.observation_space, task.action_space, MLPPolicyConfig(kind="mlp", hidden=[16]))
    cfg = PPOConfig(kind="ppo", steps=4, num_envs=2, num_steps=100, return_window=2, keep_best=True,
                    targets="mc", weight_decay=1e-3, lr=3e-3)
    phase = PPOPhase(cfg, SimpleNamespace(policy=pol, task=task, seed=0))
    assert [g["weight_decay"] for g in phase.optimizer.param_groups] == [1e-3, 1e-3]
    rets, states = [], []
    for step in range(4):  # each rollout holds exactly the 2 episodes of its 2 envs
        states.append({k: v.clone() for k, v in pol.state_dict().items()})
        m = phase.step(step, step)
        rets.append(m["episodic_return"])
        assert m["best_return"] == max(rets)
    phase.on_end()
    best = states[int(np.argmax(rets))]
    assert all(torch.equal(best[k], v) for k, v in pol.state_dict().items())
