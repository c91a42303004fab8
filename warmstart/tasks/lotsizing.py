"""Stochastic multi-item, multi-machine lot-sizing as a Gymnasium env: ``warmstart/LotSizing-v0``.

The setting of PDPPO (METHODS.md G). Each period (one env step):

1. **decision** -- every machine produces one item or idles (``MultiDiscrete([n_items + 1] * M)``,
   0 = idle, k = item k-1);
2. **deterministic part** -- a machine switching to another item pays ``setup_cost[m, i]`` and loses
   ``setup_loss[m, i]`` units of that period's production; production is added to inventory, which
   is capped at ``max_inventory`` (overflow is scrapped). The result is the **post-decision state**
   (``info["post_decision_state"]``, or :func:`post_decision_state` for any state and action);
3. **stochastic part** -- demand per item ``d ~ Binomial(demand_n, demand_p)`` (or exactly its mean
   ``demand_n * demand_p`` with ``stochastic_demand=False``) is served from stock; unmet demand is
   lost (``lost_sales_cost`` per unit) and what is left pays ``holding_cost`` per unit.

Reward = -(setup + lost sales + holding) of the period; episodes are truncated after ``horizon``
periods (100). The observation (and the post-decision state) is ``[inventory per item (I),
setup per machine (M)]`` as float32, where setup 0 means "not set up yet" and k means item k-1; an
idle machine keeps its setup, so resuming the same item later costs nothing.

Parameters are a :class:`LotSizingParams`; :data:`PRESETS` holds a small setting with our own costs
(:func:`generate_params`) and the paper's 15-item / 5-machine setting plus a smaller 5 / 2 one with
the paper's parameters (:func:`paper_params`: random initial inventory and setups at every reset),
each drawn once with a fixed seed. Any field can be overridden through ``gymnasium.make(...,
**overrides)``; scalars broadcast to their shape. Invalid values raise a ValueError naming the
parameter.

Speed: the dynamics are numpy over a batch of envs; :class:`LotSizingVecEnv` steps N envs in one call
and is the ``vector_entry_point`` that training uses (``benchmarks/lotsizing_env_speed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "warmstart/LotSizing-v0"


@dataclass(frozen=True)
class LotSizingParams:
    """Sizes and costs of one lot-sizing instance. Arrays: (M, I) per machine and item, (I,) per item,
    (M,) per machine."""

    n_items: int
    n_machines: int
    production: np.ndarray  # (M, I) units per period when machine m makes item i
    setup_cost: np.ndarray  # (M, I) cost of switching machine m to item i
    setup_loss: np.ndarray  # (M, I) units of production lost in the period of a switch
    holding_cost: np.ndarray  # (I,) per unit left in stock at the end of a period
    lost_sales_cost: np.ndarray  # (I,) per unit of unmet demand
    max_inventory: np.ndarray  # (I,) stock cap; production beyond it is scrapped
    initial_inventory: np.ndarray  # (I,)
    initial_setup: np.ndarray  # (M,) 0 = not set up, k = item k-1
    demand_n: int = 20  # Binomial(n, p) demand per item and period
    demand_p: float = 0.4
    stochastic_demand: bool = True  # False: demand is exactly demand_n * demand_p every period
    horizon: int = 100
    random_reset: bool = False  # True: reset draws the inventory and setups (the paper's env)
    observe_time: bool = False  # True: observations end with t / horizon (time-limit awareness, see _with_time)

    def __post_init__(self):
        validate_params(self)

    @property
    def mean_demand(self) -> float:
        return self.demand_n * self.demand_p


_SHAPES = {
    "production": "MI", "setup_cost": "MI", "setup_loss": "MI", "holding_cost": "I",
    "lost_sales_cost": "I", "max_inventory": "I", "initial_inventory": "I", "initial_setup": "M",
}


def validate_params(p: LotSizingParams) -> None:
    """Raise ValueError naming the first invalid parameter and what would be right."""

    def bad(name, why):
        raise ValueError(f"LotSizing parameter {name!r}: {why}")

    for name in ("n_items", "n_machines", "horizon", "demand_n"):
        v = getattr(p, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            bad(name, f"must be a positive integer, got {v!r}")
    if not 0.0 <= float(p.demand_p) <= 1.0:
        bad("demand_p", f"must be a probability in [0, 1], got {p.demand_p!r}")
    dims = {"M": p.n_machines, "I": p.n_items}
    for name, shape in _SHAPES.items():
        arr = getattr(p, name)
        want = tuple(dims[c] for c in shape)
        if not isinstance(arr, np.ndarray) or arr.shape != want:
            got = getattr(arr, "shape", type(arr).__name__)
            bad(name, f"must have shape {want} ({' x '.join('machines' if c == 'M' else 'items' for c in shape)}), got {got}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            bad(name, f"must be finite and >= 0, got {arr.tolist()}")
    if np.any(p.max_inventory <= 0):
        bad("max_inventory", f"must be > 0 for every item, got {p.max_inventory.tolist()}")
    if np.any(p.initial_inventory > p.max_inventory):
        bad("initial_inventory", "must not exceed max_inventory")
    if np.any(p.initial_setup > p.n_items) or np.any(p.initial_setup != np.round(p.initial_setup)):
        bad("initial_setup", f"must hold integers in 0..{p.n_items} (0 = not set up), got {p.initial_setup.tolist()}")


def generate_params(n_items: int, n_machines: int, seed: int = 0, **overrides: Any) -> LotSizingParams:
    """Draw an instance from generator ranges in the spirit of the PDPPO paper's instance generator
    (its exact ranges are not published in METHODS.md; these keep total capacity ~1.5x mean demand
    so that the scheduling of setups matters):

    production ~ U{15..25} x 0.6 * n_items / n_machines units per period (rounded; with the default
    Binomial(20, 0.4) demand this is 1.5x the mean total demand), setup cost ~ U[20, 50], setup loss
    ~ U{1..5}, holding ~ U[1, 2], lost sales ~ U[10, 20], max inventory 60 per item.
    """
    if n_items < 1 or n_machines < 1:
        raise ValueError(f"LotSizing parameter 'n_items'/'n_machines': must be >= 1, got {n_items}/{n_machines}")
    rng = np.random.default_rng(seed)
    scale = 0.6 * n_items / n_machines
    base = dict(
        n_items=n_items,
        n_machines=n_machines,
        production=np.round(rng.integers(15, 26, size=(n_machines, n_items)) * scale).astype(np.float64),
        setup_cost=np.round(rng.uniform(20, 50, size=(n_machines, n_items)), 1),
        setup_loss=rng.integers(1, 6, size=(n_machines, n_items)).astype(np.float64),
        holding_cost=np.round(rng.uniform(1, 2, size=n_items), 2),
        lost_sales_cost=np.round(rng.uniform(10, 20, size=n_items), 1),
        max_inventory=np.full(n_items, 60.0),
        initial_inventory=np.zeros(n_items),
        initial_setup=np.zeros(n_machines),
    )
    return make_params(base, **overrides)


def make_params(base: dict | LotSizingParams, **overrides: Any) -> LotSizingParams:
    """Build params from a base (dict or params) and overrides; list/scalar values are broadcast to
    their field's shape (a scalar ``holding_cost: 1.5`` means 1.5 for every item)."""
    d = {f.name: getattr(base, f.name) for f in fields(LotSizingParams)} if isinstance(base, LotSizingParams) else dict(base)
    known = {f.name for f in fields(LotSizingParams)}
    for k, v in overrides.items():
        if k not in known:
            import difflib

            near = difflib.get_close_matches(k, sorted(known), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown LotSizing parameter {k!r}.{hint} Known: {', '.join(sorted(known))}.")
        d[k] = v
    dims = {"M": d["n_machines"], "I": d["n_items"]}
    for name, shape in _SHAPES.items():
        v = d.get(name)
        if v is None:
            continue
        arr = np.asarray(v, dtype=np.float64)
        want = tuple(dims[c] for c in shape) if all(isinstance(dims[c], (int, np.integer)) for c in shape) else None
        if arr.ndim == 0 and want is not None:
            arr = np.full(want, float(arr))
        d[name] = arr
    return LotSizingParams(**d)


def paper_params(n_items: int, n_machines: int, seed: int = 0, **overrides: Any) -> LotSizingParams:
    """Draw an instance with the PDPPO paper's parameters (METHODS.md G, from the authors' code):
    holding 0.01 and lost sales 0.2 per unit, setup cost ~ U[1, 2], setup loss 1 unit, production per
    (machine, item) pair 0 (that machine cannot make that item) with probability 0.4, else ~ U{1..40}
    units, inventory cap 100, demand Binomial(20, 0.4), and a random initial inventory and setups at
    every reset (``random_reset``)."""
    if n_items < 1 or n_machines < 1:
        raise ValueError(f"LotSizing parameter 'n_items'/'n_machines': must be >= 1, got {n_items}/{n_machines}")
    rng = np.random.default_rng(seed)
    rates = rng.integers(1, 41, size=(n_machines, n_items)).astype(np.float64)
    base = dict(
        n_items=n_items,
        n_machines=n_machines,
        production=np.where(rng.random((n_machines, n_items)) < 0.4, 0.0, rates),
        setup_cost=np.round(rng.uniform(1, 2, size=(n_machines, n_items)), 2),
        setup_loss=np.ones((n_machines, n_items)),
        holding_cost=np.full(n_items, 0.01),
        lost_sales_cost=np.full(n_items, 0.2),
        max_inventory=np.full(n_items, 100.0),
        initial_inventory=np.zeros(n_items),
        initial_setup=np.zeros(n_machines),
        random_reset=True,
    )
    return make_params(base, **overrides)


#: Named settings. "small": 3 items / 2 machines with our own costs (:func:`generate_params`; fast, for
#: tests and quick benchmarks); "paper-15x5": the paper's 15-item / 5-machine setting with the paper's
#: parameters (:func:`paper_params`); "paper-5x2": the same parameters at 5 items / 2 machines (a
#: smaller setting of ours).
PRESETS: dict[str, LotSizingParams] = {
    "small": generate_params(3, 2, seed=1),
    "paper-15x5": paper_params(15, 5, seed=15),
    "paper-5x2": paper_params(5, 2, seed=5),
}


def params_from_kwargs(preset: str = "small", **overrides: Any) -> LotSizingParams:
    if preset not in PRESETS:
        raise ValueError(f"LotSizing parameter 'preset': unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return make_params(PRESETS[preset], **overrides)


# ------------------------------------------------------------------------------ transition pieces
# One implementation of the dynamics, vectorised over a batch of B envs (numpy); the single env is
# the B = 1 case, so the scalar and the vector env cannot drift apart.


def _deterministic_part(p: LotSizingParams, inventory: np.ndarray, setup: np.ndarray, action: np.ndarray):
    """Decision -> post-decision state for a batch: ``inventory`` (B, I), ``setup`` (B, M), ``action``
    (B, M) in 0..I. Returns (post inventory (B, I), new setup (B, M), setup cost (B,))."""
    B, I = inventory.shape
    a = np.asarray(action, dtype=np.int64).reshape(B, p.n_machines)
    active = a > 0  # (B, M); idle machines keep their setup and produce nothing
    item = np.where(active, a - 1, 0)  # (B, M)
    pair = item + np.arange(p.n_machines) * I  # (B, M) flat index of (machine, item) into the (M, I) tables
    switch = active & (a != setup)  # (B, M)
    setup_cost = (p.setup_cost.take(pair) * switch).sum(1)  # (B,)
    made = p.production.take(pair)  # (B, M)
    made = np.where(switch, np.maximum(made - p.setup_loss.take(pair), 0.0), made) * active
    # two machines may make the same item: a bincount over (env, item) adds them up
    cell = (item + np.arange(B)[:, None] * I).ravel()  # (B*M,) flat index into (B, I)
    post_inv = inventory + np.bincount(cell, weights=made.ravel(), minlength=B * I).reshape(B, I)
    np.minimum(post_inv, p.max_inventory, out=post_inv)
    new_setup = np.where(active, a, setup).astype(np.float64)
    return post_inv, new_setup, setup_cost


def _demand_part(p: LotSizingParams, post_inv: np.ndarray, demand: np.ndarray):
    """Post-decision inventory (B, I) and demand (B, I) -> (inventory (B, I), lost-sales cost (B,),
    holding cost (B,))."""
    sold = np.minimum(post_inv, demand)
    inv = post_inv - sold
    return inv, (demand - sold) @ p.lost_sales_cost, inv @ p.holding_cost


def _draw_demand(p: LotSizingParams, rng: np.random.Generator, batch: int) -> np.ndarray:
    if p.stochastic_demand:
        return rng.binomial(p.demand_n, p.demand_p, size=(batch, p.n_items)).astype(np.float64)
    return np.full((batch, p.n_items), p.mean_demand)


def _initial_state(p: LotSizingParams, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(inventory (B, I), setup (B, M)) at reset: the fixed initial values, or with ``random_reset``
    inventory ~ U{0..max_inventory} per item and each machine set up for an item ~ U{1..I}."""
    if not p.random_reset:
        return np.tile(p.initial_inventory, (batch, 1)), np.tile(p.initial_setup, (batch, 1)).astype(np.float64)
    inv = rng.integers(0, np.floor(p.max_inventory).astype(np.int64) + 1, size=(batch, p.n_items))
    setup = rng.integers(1, p.n_items + 1, size=(batch, p.n_machines))
    return inv.astype(np.float64), setup.astype(np.float64)


def post_decision_state(params: LotSizingParams, state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The post-decision state of ``state`` (``[inventory (I), setup (M)]``) under ``action`` (M,):
    setups switched and production added (capped), before any demand. Same layout and dtype as an
    observation."""
    state = np.asarray(state, dtype=np.float64).reshape(1, -1)
    I, M = params.n_items, params.n_machines
    inv, setup = state[:, :I], state[:, I : I + M]
    post_inv, new_setup, _ = _deterministic_part(params, inv, setup, np.asarray(action).reshape(1, -1))
    # the decision does not advance the clock: the post-decision state keeps the state's time feature
    return np.concatenate([post_inv, new_setup, state[:, I + M :]], axis=1)[0].astype(np.float32)


def _with_time(p: LotSizingParams, state: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``state`` (B, I + M) with the elapsed fraction ``t / horizon`` (B,) appended when
    ``observe_time`` is on. Why: the episode is truncated at ``horizon``, so the return from a state
    depends on the periods left; without them in the observation a critic cannot predict Monte-Carlo
    returns (their spread over one batch is mostly the time left), and its baseline is noise
    (Pardo et al. 2018, "Time limits in reinforcement learning")."""
    if not p.observe_time:
        return state.astype(np.float32)
    return np.concatenate([state, (np.asarray(t, dtype=np.float64) / p.horizon).reshape(-1, 1)], axis=1).astype(np.float32)


def _spaces(p: LotSizingParams):
    action = spaces.MultiDiscrete(np.full(p.n_machines, p.n_items + 1, dtype=np.int64))
    high = np.concatenate([p.max_inventory, np.full(p.n_machines, float(p.n_items))] + ([np.ones(1)] if p.observe_time else [])).astype(np.float32)
    return spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32), action


class LotSizingEnv(gym.Env):
    """See the module docstring. ``info`` of every step: ``post_decision_state``, ``cost`` and its
    parts ``setup_cost``, ``lost_sales_cost``, ``holding_cost``."""

    metadata = {"render_modes": []}

    def __init__(self, preset: str = "small", params: LotSizingParams | None = None, **overrides: Any):
        self.params = make_params(params, **overrides) if params is not None else params_from_kwargs(preset, **overrides)
        self.observation_space, self.action_space = _spaces(self.params)
        self._inv, self._setup = _initial_state(self.params, np.random.default_rng(0), 1)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return _with_time(self.params, np.concatenate([self._inv, self._setup], axis=1), np.array([self._t]))[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._inv, self._setup = _initial_state(self.params, self.np_random, 1)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        p = self.params
        post_inv, self._setup, setup_cost = _deterministic_part(p, self._inv, self._setup, action)
        post = _with_time(p, np.concatenate([post_inv, self._setup], axis=1), np.array([self._t]))[0]
        self._inv, lost, holding = _demand_part(p, post_inv, _draw_demand(p, self.np_random, 1))
        setup_cost, lost_cost, holding = float(setup_cost[0]), float(lost[0]), float(holding[0])
        cost = setup_cost + lost_cost + holding
        self._t += 1
        info = {
            "post_decision_state": post,
            "cost": cost,
            "setup_cost": setup_cost,
            "lost_sales_cost": lost_cost,
            "holding_cost": holding,
        }
        return self._obs(), -cost, False, self._t >= p.horizon, info


class LotSizingVecEnv:
    """``num_envs`` lot-sizing envs stepped together in numpy (no Python loop over envs), with the
    contract of :class:`warmstart.tasks.gym.VecEnv`: same-step autoreset (``info["final_obs"]`` holds
    the last observation of an episode that ended, ``info["episode_return"]`` / ``["episode_length"]``
    its totals, NaN elsewhere), plus ``info["post_decision_state"]`` (N, I + M) and ``info["cost"]``
    (N,) on every step. One ``numpy`` Generator (seeded by :meth:`reset`) drives all envs, so the
    draws differ from N separately seeded :class:`LotSizingEnv` s, but the dynamics are the same
    functions. Registered as the ``vector_entry_point`` of ``warmstart/LotSizing-v0``, which is how
    :meth:`GymTask.make_envs` finds it. Pickles whole (RNG and episode progress), for exact resumes."""

    warmstart_vec_env = True  # keeps VecEnv's contract: GymTask.make_envs may use it natively

    def __init__(self, num_envs: int, preset: str = "small", params: LotSizingParams | None = None,
                 info_keys: tuple[str, ...] = (), **overrides: Any):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"LotSizingVecEnv: num_envs must be a positive integer, got {num_envs!r}")
        self.params = make_params(params, **overrides) if params is not None else params_from_kwargs(preset, **overrides)
        self.num_envs = int(num_envs)
        self.single_observation_space, self.single_action_space = _spaces(self.params)
        self.info_keys = info_keys
        self.reset()

    def _obs(self) -> np.ndarray:
        return _with_time(self.params, np.concatenate([self._inv, self._setup], axis=1), self._t)  # (N, I + M [+ 1])

    def reset(self, seed: int | None = None) -> np.ndarray:
        self._rng = np.random.default_rng(seed)
        self._inv, self._setup = _initial_state(self.params, self._rng, self.num_envs)
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._ret = np.zeros(self.num_envs)
        return self._obs()

    def step(self, actions: np.ndarray):
        p, n = self.params, self.num_envs
        post_inv, self._setup, setup_cost = _deterministic_part(p, self._inv, self._setup, actions)
        post = _with_time(p, np.concatenate([post_inv, self._setup], axis=1), self._t)
        self._inv, lost, holding = _demand_part(p, post_inv, _draw_demand(p, self._rng, n))
        cost = setup_cost + lost + holding  # (N,)
        self._t += 1
        self._ret -= cost
        trunc = self._t >= p.horizon
        obs = self._obs()
        info = {"final_obs": None, "episode_return": None, "episode_length": None,
                "post_decision_state": post, "cost": cost}
        if trunc.any():
            idx = np.nonzero(trunc)[0]
            info["final_obs"] = obs.copy()
            info["episode_return"] = np.where(trunc, self._ret, np.nan)
            info["episode_length"] = np.where(trunc, self._t, np.nan)
            inv, setup = _initial_state(p, self._rng, len(idx))
            self._inv[idx], self._setup[idx] = inv, setup
            self._t[idx], self._ret[idx] = 0, 0.0
            obs[idx] = _with_time(p, np.concatenate([inv, setup], axis=1), self._t[idx])
        return obs, -cost, np.zeros(n, dtype=bool), trunc, info

    def close(self) -> None:
        pass


def _register() -> None:
    if ENV_ID not in gym.registry:
        # the horizon truncates inside the env (it is a parameter), so no TimeLimit wrapper
        gym.register(id=ENV_ID, entry_point=LotSizingEnv, vector_entry_point=LotSizingVecEnv)


_register()


__all__ = [
    "ENV_ID", "LotSizingEnv", "LotSizingParams", "LotSizingVecEnv", "paper_params", "PRESETS", "generate_params", "make_params",
    "params_from_kwargs", "post_decision_state", "validate_params",
]
