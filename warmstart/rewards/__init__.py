"""Reward terms: plain functions of episodes, named and weighted.

A reward term is either

* per episode: ``fn(episode) -> float | list[float] | None``, or
* batched (as TRL users write them, and as a reward model scores): ``fn(episodes) -> list``, one
  value per episode; mark it with :func:`batched` (``@batched`` on the inner function).

A value that is a list holds **one value per policy turn** (per-question credit, tool-use bonuses):
it lands in ``episode.turn_rewards[k][name]`` (times the term's weight), so multi-turn learners put
it on that turn's tokens; ``episode.rewards[name]`` keeps the sum over turns for logging.

:class:`RewardSet` applies every term to every episode and writes
``episode.reward`` = the weighted sum of the whole-episode terms (also kept in
``info["episode_reward"]``) + every turn's reward terms (the task's and the per-turn ones).
A term that raises, runs over its time limit (``guard.callback_timeout_s``), returns a non-number, a non-finite number or a list of the wrong length is
reported once (with the sample that broke it) and scores ``None`` for that episode; the run goes on,
and the total counts it as 0.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from warmstart.episode import Episode
from warmstart.errors import CallbackTimeout, time_limit, warn

RewardFn = Callable[[Episode], "float | list[float] | None"]


def batched(fn):
    """Mark a reward function as batched: called once with the list of episodes, returns a list."""
    fn.batched = True
    return fn


def _check_value(v, e: Episode):
    """A term's value as None, a float, or a list of floats (one per policy turn); raises ValueError."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        if len(v) != len(e.turns):
            raise ValueError(f"returned {len(v)} per-turn values for an episode with {len(e.turns)} policy turns")
        vals = [None if x is None else float(x) for x in v]
        if any(x is not None and not math.isfinite(x) for x in vals):
            raise ValueError(f"returned a non-finite per-turn value {v!r}")
        return vals
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"returned {x!r} (rewards must be finite numbers)")
    return x


class RewardSet:
    """Named, weighted reward terms applied together."""

    def __init__(self, fns: list[RewardFn], names: list[str], weights: list[float], timeout_s: float = 0.0):
        if not (len(fns) == len(names) == len(weights)):
            raise ValueError("RewardSet needs one name and one weight per reward function")
        self.fns, self.names, self.weights = fns, names, weights
        self.timeout_s = timeout_s  # per call of a term (seconds; 0: none); see warmstart.errors.time_limit
        self._reported: set[str] = set()
        self.failures: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.fns)

    def _fail(self, name: str, e: Episode, exc: Exception) -> None:
        self.failures[name] = self.failures.get(name, 0) + 1
        if name not in self._reported:
            self._reported.add(name)
            warn(f"reward '{name}' failed ({type(exc).__name__}: {exc})\n"
                 f"  on prompt {e.prompt!r} with output {e.text[:200]!r}.\n"
                 f"  It scores None for such samples (counted as 0 in the total); the run goes on. "
                 f"Further failures of '{name}' are counted in the metrics, not printed.")

    def _values(self, fn, name: str, eps: list[Episode]) -> list:
        if getattr(fn, "batched", False):
            try:
                with time_limit(self.timeout_s, f"reward '{name}'"):
                    raw = list(fn(eps))
                if len(raw) != len(eps):
                    raise ValueError(f"a batched reward returned {len(raw)} values for {len(eps)} episodes")
            except Exception as exc:  # (a time-out too) a user's reward function failing must not kill the run
                for e in eps:
                    self._fail(name, e, exc)
                return [None] * len(eps)
        else:
            raw = []
            timed_out = None
            for e in eps:
                if timed_out is not None:  # one time-out per batch is waited for, not one per episode
                    self._fail(name, e, timed_out)
                    raw.append(None)
                    continue
                try:
                    with time_limit(self.timeout_s, f"reward '{name}'"):
                        raw.append(fn(e))
                except Exception as exc:
                    if isinstance(exc, CallbackTimeout):
                        timed_out = exc
                    self._fail(name, e, exc)
                    raw.append(None)
        out = []
        for e, v in zip(eps, raw):
            try:
                out.append(_check_value(v, e))
            except (TypeError, ValueError) as exc:
                self._fail(name, e, exc)
                out.append(None)
        return out

    def score(self, episodes: Iterable[Episode]) -> list[Episode]:
        """Fill ``rewards``, per-turn terms and ``reward`` of each episode in place; returns them."""
        eps = list(episodes)
        values = [self._values(fn, name, eps) for fn, name in zip(self.fns, self.names)]
        for b, e in enumerate(eps):
            total = 0.0
            for vals, name, w in zip(values, self.names, self.weights):
                v = vals[b]
                if isinstance(v, list):  # one value per policy turn
                    while len(e.turn_rewards) < len(e.turns):
                        e.turn_rewards.append({})
                    for k, x in enumerate(v):
                        e.turn_rewards[k][name] = None if x is None else w * x
                    e.rewards[name] = sum(x for x in v if x is not None)
                    continue
                e.rewards[name] = v
                if v is not None:
                    total += w * v
            e.info["episode_reward"] = total
            e.reward = total + e.turn_reward_total()
        return eps

    def metrics(self, episodes: list[Episode]) -> dict[str, float]:
        """Mean of each term over the episodes (ignoring None), plus failure counts."""
        out: dict[str, float] = {}
        for name in self.names:
            vals = [e.rewards.get(name) for e in episodes]
            vals = [v for v in vals if v is not None]
            out[f"reward/{name}"] = sum(vals) / len(vals) if vals else float("nan")
        if episodes:
            out["reward"] = sum(e.reward for e in episodes) / len(episodes)
        for name, n in self.failures.items():
            out[f"reward_failures/{name}"] = n
        return out
