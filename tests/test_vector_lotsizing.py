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
