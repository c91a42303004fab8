"""The lot-sizing env: Gymnasium compliance, determinism, post-decision states, parameter errors."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from warmstart.tasks import lotsizing as L


def _tiny(**kw):
    """2 items, 2 machines, hand-checkable numbers."""
    base = dict(
        n_items=2, n_machines=2,
        production=[[10.0, 6.0], [4.0, 8.0]], setup_cost=[[5.0, 7.0], [3.0, 2.0]],
        setup_loss=[[1.0, 2.0], [1.0, 9.0]], holding_cost=[1.0, 2.0], lost_sales_cost=[10.0, 20.0],
        max_inventory=[12.0, 20.0], initial_inventory=[0.0, 0.0], initial_setup=[0, 0],
    )
    base.update(kw)
    return L.make_params(base)


@pytest.mark.parametrize("preset", ["small", "paper-15x5"])
def test_vector_lotsizing_passes_check_env(preset):
    env = gym.make(L.ENV_ID, preset=preset)
    check_env(env.unwrapped)
    assert env.action_space.nvec.tolist() == [L.PRESETS[preset].n_items + 1] * L.PRESETS[preset].n_machines


def test_vector_lotsizing_presets_match_the_paper_sizes():
    p = L.PRESETS["paper-15x5"]
    assert (p.n_items, p.n_machines, p.horizon, p.demand_n, p.demand_p) == (15, 5, 100, 20, 0.4)


def _trajectory(seed, stochastic=True, n=150):
    env = gym.make(L.ENV_ID, preset="small", stochastic_demand=stochastic)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(n):
        obs, r, te, tr, info = env.step(env.action_space.sample())
        out += [obs, np.array([r, te, tr]), info["post_decision_state"]]
        if te or tr:
            obs, _ = env.reset()
            out.append(obs)
    return np.concatenate([np.ravel(x) for x in out])


def test_vector_lotsizing_deterministic_under_seed_and_truncates_at_horizon():
    a, b, c = _trajectory(3), _trajectory(3), _trajectory(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    env = gym.make(L.ENV_ID, preset="small", horizon=7)
    env.reset(seed=0)
    ends = [env.step(env.action_space.sample())[3] for _ in range(7)]
    assert ends == [False] * 6 + [True]


def test_vector_post_decision_state_hand_computed():
    p = _tiny()
    state = np.array([3.0, 5.0, 1.0, 0.0])  # inventory (3, 5); machine 0 set up for item 0, machine 1 none
    # machine 0 keeps item 0 (no setup): +10 -> 13, capped at 12; machine 1 switches to item 1:
    # 8 - loss 9 -> 0 produced (never negative), setup becomes 2
    post = L.post_decision_state(p, state, np.array([1, 2]))
    assert post.tolist() == [12.0, 5.0, 1.0, 2.0]
    # both idle: nothing changes, setups are kept
    assert L.post_decision_state(p, state, np.array([0, 0])).tolist() == state.tolist()


def test_vector_lotsizing_step_costs_and_info():
    p = _tiny(stochastic_demand=False, demand_n=10, demand_p=0.5)  # demand exactly 5 per item
    env = L.LotSizingEnv(params=p)
    env.reset(seed=0)
    # machine 0 -> item 0 (setup 5, makes 10-1=9), machine 1 -> item 1 (setup 2, makes 8-9 -> 0)
    obs, r, te, tr, info = env.step(np.array([1, 2]))
    assert info["post_decision_state"].tolist() == [9.0, 0.0, 1.0, 2.0]
    assert info["post_decision_state"].tolist() == L.post_decision_state(p, [0, 0, 0, 0], [1, 2]).tolist()
    # item 0: sells 5, keeps 4 (holding 4*1); item 1: 5 lost (5*20)
    assert obs.tolist() == [4.0, 0.0, 1.0, 2.0]
    assert (info["setup_cost"], info["lost_sales_cost"], info["holding_cost"]) == (7.0, 100.0, 4.0)
    assert r == -111.0 and info["cost"] == 111.0 and not te and not tr


@pytest.mark.parametrize(
    "override, name",
    [
        ({"n_machines": 0}, "n_machines"),
        ({"holding_cost": -1.0}, "holding_cost"),
        ({"setup_cost": [[1.0, 2.0]]}, "setup_cost"),
        ({"demand_p": 1.5}, "demand_p"),
        ({"max_inventory": 0.0}, "max_inventory"),
        ({"initial_setup": [3, 0]}, "initial_setup"),
        ({"horizon": 0}, "horizon"),
    ],
)
def test_vector_lotsizing_invalid_params_name_the_parameter(override, name):
    with pytest.raises(ValueError, match=name):
        _tiny(**override)


def test_vector_lotsizing_unknown_kwarg_and_preset_are_clear_errors():
    with pytest.raises(ValueError, match="holding_cost"):
        gym.make(L.ENV_ID, holding_costs=1.0)
    with pytest.raises(ValueError, match="preset"):
        gym.make(L.ENV_ID, preset="huge")


# ------------------------------------------------------------------- the numpy vector env (issue 17)


def test_vector_lotsizing_vec_env_matches_single_envs_step_by_step():
    p = _tiny(stochastic_demand=False, demand_n=10, demand_p=0.5, horizon=5)
    venv = L.LotSizingVecEnv(3, params=p)
    singles = [L.LotSizingEnv(params=p) for _ in range(3)]
    obs = venv.reset(seed=0)
    assert np.array_equal(obs, np.stack([e.reset(seed=0)[0] for e in singles]))
    rng = np.random.default_rng(0)
    for _ in range(12):  # crosses two episode ends (horizon 5)
        acts = rng.integers(0, 3, size=(3, 2))
        o, r, te, tr, info = venv.step(acts)
        for i, e in enumerate(singles):
            o1, r1, te1, tr1, inf1 = e.step(acts[i])
            assert np.array_equal(info["post_decision_state"][i], inf1["post_decision_state"])
            assert r[i] == r1 and info["cost"][i] == inf1["cost"] and tr[i] == tr1 and not te[i]
            if tr1:
                assert np.array_equal(info["final_obs"][i], o1)
                o1, _ = e.reset()
            assert np.array_equal(o[i], o1)


def test_vector_lotsizing_vec_env_hand_computed_batch():
    """Two envs, one where both machines make the same item (added machine by machine)."""
    p = _tiny(stochastic_demand=False, demand_n=10, demand_p=0.5)  # demand 5 per item
    venv = L.LotSizingVecEnv(2, params=p)
    venv.reset(seed=0)
    o, r, _, _, info = venv.step(np.array([[1, 1], [0, 2]]))
    # env 0: m0 -> item 0 (setup 5, 10 - 1 = 9), m1 -> item 0 (setup 3, 4 - 1 = 3): 12 (cap 12);
    # sells 5, keeps 7 (holding 7); item 1: 5 lost (100). Cost 5 + 3 + 100 + 7 = 115.
    # env 1: m0 idle, m1 -> item 1 (setup 2, 8 - 9 -> 0); 5 + 5 lost (50 + 100) + 2 = 152.
    assert info["post_decision_state"].tolist() == [[12.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]]
    assert o.tolist() == [[7.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]]
    assert r.tolist() == [-115.0, -152.0] and info["cost"].tolist() == [115.0, 152.0]


def test_vector_lotsizing_vec_env_autoreset_contract_and_pickle():
    import pickle

    venv = L.LotSizingVecEnv(4, preset="paper-5x2", horizon=3, info_keys=("post_decision_state",))
    venv.reset(seed=1)
    total = np.zeros(4)
    for t in range(3):
        o, r, te, tr, info = venv.step(np.ones((4, 2), dtype=np.int64))
        total += r
        if t < 2:
            assert not tr.any() and info["episode_return"] is None
    assert tr.all()
    assert np.allclose(info["episode_return"], total) and np.all(info["episode_length"] == 3)
    assert not np.array_equal(info["final_obs"], o)  # o is the next episode's (random) first state
    clone = pickle.loads(pickle.dumps(venv))
    a = np.random.default_rng(0).integers(0, 6, size=(4, 2))
    assert all(np.array_equal(x, y) for x, y in zip(venv.step(a)[:4], clone.step(a)[:4]))


def test_vector_lotsizing_paper_presets_have_the_paper_parameters():
    for name, (n_items, n_machines) in {"paper-15x5": (15, 5), "paper-5x2": (5, 2)}.items():
        p = L.PRESETS[name]
        assert (p.n_items, p.n_machines, p.demand_n, p.demand_p, p.horizon) == (n_items, n_machines, 20, 0.4, 100)
        assert np.all(p.holding_cost == 0.01) and np.all(p.lost_sales_cost == 0.2) and np.all(p.max_inventory == 100)
        assert np.all(p.setup_loss == 1) and np.all((p.setup_cost >= 1) & (p.setup_cost <= 2))
        assert np.all((p.production == 0) | ((p.production >= 1) & (p.production <= 40)))
        assert p.random_reset
    prod = L.paper_params(40, 40, seed=0).production  # 1,600 pairs: about 40% cannot produce
    assert 0.35 < np.mean(prod == 0) < 0.45
    env = L.LotSizingEnv(preset="paper-15x5")
    starts = np.stack([env.reset(seed=s)[0] for s in range(50)])
    assert len(np.unique(starts, axis=0)) == 50  # random initial inventory and setups
    assert starts[:, :15].min() >= 0 and starts[:, :15].max() <= 100 and starts[:, 15:].min() >= 1
    assert np.array_equal(env.reset(seed=3)[0], env.reset(seed=3)[0])


def test_vector_gym_task_builds_the_numpy_vector_env():
    from warmstart.tasks.gym import GymTask, GymTaskConfig, VecEnv

    cfg = dict(kind="gym", env_id=L.ENV_ID, env_kwargs={"preset": "paper-5x2"})
    venv, obs = GymTask(GymTaskConfig(**cfg)).make_envs(3, seed=0, info_keys=("post_decision_state",))
    assert isinstance(venv, L.LotSizingVecEnv) and obs.shape == (3, 7) and venv.params.n_items == 5
    # a time-limit override only the per-env wrapper applies; CartPole's own vector env has another contract
    assert isinstance(GymTask(GymTaskConfig(**cfg, max_episode_steps=50)).make_envs(2, seed=0)[0], VecEnv)
    assert isinstance(GymTask(GymTaskConfig(kind="gym", env_id="CartPole-v1")).make_envs(2, seed=0)[0], VecEnv)


def test_vector_lotsizing_observe_time_appends_elapsed_fraction():
    """observe_time: observations end with t / horizon, the post-decision state keeps the state's
    time (a decision does not advance the clock), and an autoreset env restarts at 0."""
    p = _tiny(observe_time=True, horizon=4)
    env = L.LotSizingEnv(params=p)
    assert env.observation_space.shape == (5,) and env.observation_space.high[-1] == 1.0
    obs, _ = env.reset(seed=0)
    assert obs[-1] == 0.0
    for t in range(1, 4):
        prev = obs
        obs, _, _, trunc, info = env.step(np.array([1, 2]))
        assert obs[-1] == pytest.approx(t / 4) and not trunc
        assert info["post_decision_state"][-1] == pytest.approx((t - 1) / 4)
        np.testing.assert_allclose(L.post_decision_state(p, prev, np.array([1, 2])), info["post_decision_state"])
    vec = L.LotSizingVecEnv(3, params=p)
    obs = vec.reset(seed=1)
    assert obs.shape == (3, 5) and (obs[:, -1] == 0).all()
    for t in range(1, 5):
        obs, _, _, trunc, info = vec.step(np.ones((3, 2), dtype=np.int64))
        assert np.allclose(info["post_decision_state"][:, -1], (t - 1) / 4)
    assert trunc.all() and (obs[:, -1] == 0).all() and np.allclose(info["final_obs"][:, -1], 1.0)
    # off by default: the paper's layout [inventory, setup]
    assert L.LotSizingEnv(params=_tiny()).observation_space.shape == (4,)
