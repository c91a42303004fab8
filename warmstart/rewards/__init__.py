"""Reward terms: plain functions of episodes, named and weighted.

A reward term is any callable ``fn(episode) -> float | None``. :class:`RewardSet` applies every term
to every episode, stores each under its name in ``episode.rewards``, and writes the weighted total to
``episode.reward``. A term that raises is reported once (with the sample that broke it) and scores
``None`` for that episode; the run goes on, and the total counts it as 0.
"""

from __future__ import annotations

from typing import Callable, Iterable

from warmstart.episode import Episode

RewardFn = Callable[[Episode], "float | None"]


class RewardSet:
    """Named, weighted reward terms applied together."""

    def __init__(self, fns: list[RewardFn], names: list[str], weights: list[float]):
        if not (len(fns) == len(names) == len(weights)):
            raise ValueError("RewardSet needs one name and one weight per reward function")
        self.fns, self.names, self.weights = fns, names, weights
        self._reported: set[str] = set()
        self.failures: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.fns)

    def score(self, episodes: Iterable[Episode]) -> list[Episode]:
        """Fill ``rewards`` and ``reward`` of each episode in place; returns them."""
        eps = list(episodes)
        for e in eps:
            total = 0.0
            for fn, name, w in zip(self.fns, self.names, self.weights):
                try:
                    v = fn(e)
                    v = None if v is None else float(v)
                except Exception as exc:  # a user's reward function failing must not kill the run
                    v = None
                    self.failures[name] = self.failures.get(name, 0) + 1
                    if name not in self._reported:
                        self._reported.add(name)
                        from warmstart.engine.logging import console

                        console.print(
                            f"[yellow]reward '{name}' raised {type(exc).__name__}: {exc}[/]\n"
                            f"  on prompt {e.prompt!r} with output {e.text[:200]!r}.\n"
                            f"  It scores None for such samples (counted as 0 in the total); the run "
                            f"goes on. Further failures of '{name}' are counted in the metrics, not printed."
                        )
                e.rewards[name] = v
                if v is not None:
                    total += w * v
            e.reward = total
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
