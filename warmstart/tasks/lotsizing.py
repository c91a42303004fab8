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

Parameters are a :class:`LotSizingParams`; :data:`PRESETS` holds a small setting and the paper's
15-item / 5-machine one, drawn once from the generator ranges in :func:`generate_params` with a fixed
seed. Any field can be overridden through ``gymnasium.make(..., **overrides)``; scalars broadcast to
their shape. Invalid values raise a ValueError naming the parameter.
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


#: Named settings. "small": 3 items / 2 machines (fast, for tests and quick benchmarks);
#: "paper-15x5": the paper's 15-item / 5-machine configuration.
PRESETS: dict[str, LotSizingParams] = {
    "small": generate_params(3, 2, seed=1),
    "paper-15x5": generate_params(15, 5, seed=15),
}


def params_from_kwargs(preset: str = "small", **overrides: Any) -> LotSizingParams:
    if preset not in PRESETS:
        raise ValueError(f"LotSizing parameter 'preset': unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return make_params(PRESETS[preset], **overrides)


# ------------------------------------------------------------------------------ transition pieces


def _deterministic_part(p: LotSizingParams, inventory: np.ndarray, setup: np.ndarray, action: np.ndarray):
    """(post inventory (I,), new setup (M,), setup cost). ``action``: (M,) in 0..I."""
    action = np.asarray(action, dtype=np.int64)
    new_setup = setup.copy()
    post_inv = inventory.copy()
    setup_cost = 0.0
    for m, a in enumerate(action):
        if a == 0:
            continue  # idle: keeps its setup, produces nothing
        i = a - 1
        made = p.production[m, i]
        if a != setup[m]:
            setup_cost += p.setup_cost[m, i]
            made = max(made - p.setup_loss[m, i], 0.0)
            new_setup[m] = a
        post_inv[i] += made
    np.minimum(post_inv, p.max_inventory, out=post_inv)
    return post_inv, new_setup, setup_cost


def post_decision_state(params: LotSizingParams, state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The post-decision state of ``state`` (``[inventory (I), setup (M)]``) under ``action`` (M,):
    setups switched and production added (capped), before any demand. Same layout and dtype as an
    observation."""
    state = np.asarray(state, dtype=np.float64)
    inv, setup = state[: params.n_items], state[params.n_items :]
    post_inv, new_setup, _ = _deterministic_part(params, inv, setup, action)
    return np.concatenate([post_inv, new_setup]).astype(np.float32)


class LotSizingEnv(gym.Env):
    """See the module docstring. ``info`` of every step: ``post_decision_state``, ``cost`` and its
    parts ``setup_cost``, ``lost_sales_cost``, ``holding_cost``."""

    metadata = {"render_modes": []}

    def __init__(self, preset: str = "small", params: LotSizingParams | None = None, **overrides: Any):
        self.params = make_params(params, **overrides) if params is not None else params_from_kwargs(preset, **overrides)
        p = self.params
        self.action_space = spaces.MultiDiscrete(np.full(p.n_machines, p.n_items + 1, dtype=np.int64))
        high = np.concatenate([p.max_inventory, np.full(p.n_machines, float(p.n_items))]).astype(np.float32)
        self.observation_space = spaces.Box(low=np.zeros_like(high), high=high, dtype=np.float32)
        self._inv = p.initial_inventory.astype(np.float64).copy()
        self._setup = p.initial_setup.astype(np.float64).copy()
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._inv, self._setup]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._inv = self.params.initial_inventory.astype(np.float64).copy()
        self._setup = self.params.initial_setup.astype(np.float64).copy()
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        p = self.params
        post_inv, self._setup, setup_cost = _deterministic_part(p, self._inv, self._setup, action)
        post = np.concatenate([post_inv, self._setup]).astype(np.float32)
        if p.stochastic_demand:
            demand = self.np_random.binomial(p.demand_n, p.demand_p, size=p.n_items).astype(np.float64)
        else:
            demand = np.full(p.n_items, p.mean_demand)
        sold = np.minimum(post_inv, demand)
        self._inv = post_inv - sold
        lost_cost = float(p.lost_sales_cost @ (demand - sold))
        holding = float(p.holding_cost @ self._inv)
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


def _register() -> None:
    if ENV_ID not in gym.registry:
        # the horizon truncates inside the env (it is a parameter), so no TimeLimit wrapper
        gym.register(id=ENV_ID, entry_point=LotSizingEnv)


_register()


__all__ = [
    "ENV_ID", "LotSizingEnv", "LotSizingParams", "PRESETS", "generate_params", "make_params",
    "params_from_kwargs", "post_decision_state", "validate_params",
]
