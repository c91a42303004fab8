"""PDPPO vs PPO on lot-sizing: final eval cost, stochastic vs deterministic demand, two sizes.

For each setting (the small 3-item/2-machine preset and the paper's 15-item/5-machine preset) and
each demand model (Binomial(20, 0.4) vs exactly its mean, 8), both recipes -- pdppo-lotsizing
(dual critics, min) and ppo-lotsizing (single critic) -- run with the same hyper-parameters and the
same env-step budget for 5 seeds. Every run is evaluated on the same 50 held-out episodes (eval seed
fixed, so the demand draws are common to all methods). Printed: mean +- std over seeds of the final
eval cost (lower is better), the PDPPO - PPO difference with a Welch t statistic, and two reference
policies: uniform random actions and a greedy heuristic (each machine makes the item with the least
stock below a target that no other machine has taken, else idles; target tuned).

    python benchmarks/pdppo_vs_ppo.py [--seeds 1 2 3 4 5] [--iters 30]   # iters x 2000 env steps per run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _vector_common import command_line, machine, run, table

SETTINGS = ["small", "paper-15x5"]


class GreedyStock:
    """Reference heuristic (a base-stock rule): a machine keeps making its current item while that
    item's stock is below ``target`` (no setup cost); otherwise it switches to the lowest-stock item
    below ``target`` that no other machine has taken, or idles. With ``can_make`` (M, I) a machine only
    considers the items it can produce (the paper's presets have production 0 for ~40% of pairs)."""

    def __init__(self, n_items: int, n_machines: int, target: float, can_make: np.ndarray | None = None):
        self.I, self.M, self.target = n_items, n_machines, target
        self.can_make = np.ones((n_machines, n_items), dtype=bool) if can_make is None else can_make
        self.training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def predict(self, obs, deterministic=True, generator=None):
        acts = np.zeros((len(obs), self.M), dtype=np.int64)
        for b, o in enumerate(obs):
            inv, setup = o[: self.I].copy(), o[self.I :]
            for m in range(self.M):
                cur = int(setup[m]) - 1
                if cur >= 0 and self.can_make[m, cur] and inv[cur] < self.target:
                    i = cur
                else:
                    cand = np.where(self.can_make[m], inv, np.inf)
                    i = int(np.argmin(cand))
                    if cand[i] >= self.target:
                        continue  # idle
                acts[b, m] = i + 1
                inv[i] = np.inf
        return acts


class Uniform(GreedyStock):
    """Reference: uniformly random actions."""

    def __init__(self, space, seed=0):
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.training = False

    def predict(self, obs, deterministic=True, generator=None):
        return np.stack([self.rng.integers(0, self.space.nvec) for _ in obs])


def reference_costs(preset: str, stochastic: bool, episodes: int) -> tuple[float, float]:
    from warmstart.engine.config import EvalConfig
    from warmstart.tasks.gym import GymTask, GymTaskConfig
    from warmstart.tasks.lotsizing import PRESETS

    task = GymTask(GymTaskConfig(kind="gym", env_id="warmstart/LotSizing-v0",
                                 env_kwargs={"preset": preset, "stochastic_demand": stochastic}), split="test")
    ev = EvalConfig(n=episodes)
    p = PRESETS[preset]
    rand = task.evaluate(Uniform(task.action_space), ev)["mean_cost"]
    # base-stock target: the best of a few multiples of the mean demand (tuned on the eval episodes,
    # so it is an optimistic reference)
    greedy = min(task.evaluate(GreedyStock(p.n_items, p.n_machines, k * p.mean_demand, p.production > 0), ev)["mean_cost"]
                 for k in (1, 1.5, 2, 3, 4))
    return rand, greedy


def welch_t(a: list[float], b: list[float]) -> float:
    a, b = np.asarray(a), np.asarray(b)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return float((a.mean() - b.mean()) / se) if se > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--iters", type=int, default=30, help="PPO iterations per run (x 2000 env steps)")
    ap.add_argument("--episodes", type=int, default=50, help="eval episodes per run")
    ap.add_argument("--settings", nargs="+", default=SETTINGS)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-pdppo-vs-ppo"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    rows = []
    for preset in args.settings:
        for stochastic in (True, False):
            costs: dict[str, list[float]] = {"pdppo": [], "ppo": []}
            for seed in args.seeds:
                for algo in ("pdppo", "ppo"):
                    sets = [f"seed={seed}", f"phases.0.steps={args.iters}", f"eval.n={args.episodes}",
                            f"task.env_kwargs.preset={preset}", f"task.env_kwargs.stochastic_demand={str(stochastic).lower()}",
                            "checkpoint.every=0"]
                    summary, train = run(f"{algo}-lotsizing", sets, args.out / f"{preset}-{stochastic}-{algo}-{seed}")
                    costs[algo].append(summary["final"]["mean_cost"])
                    print(f"  {preset:10s} stochastic={stochastic!s:5s} {algo:5s} seed {seed}: "
                          f"cost {costs[algo][-1]:.0f} ({train[-1]['env_steps']} env steps, {time.time() - t0:.0f} s so far)", flush=True)
            rand, greedy = reference_costs(preset, stochastic, args.episodes)
            pd, pp = np.array(costs["pdppo"]), np.array(costs["ppo"])
            rows.append([preset, "Binomial(20,0.4)" if stochastic else "deterministic 8",
                         f"{pd.mean():.0f} ± {pd.std(ddof=1):.0f}", f"{pp.mean():.0f} ± {pp.std(ddof=1):.0f}",
                         f"{pd.mean() - pp.mean():+.0f} ({100 * (pd.mean() - pp.mean()) / pp.mean():+.1f}%)",
                         f"{welch_t(costs['pdppo'], costs['ppo']):+.2f}", f"{greedy:.0f}", f"{rand:.0f}"])
    print()
    print(table(["setting", "demand", "PDPPO cost", "PPO cost", "PDPPO - PPO", "Welch t", "greedy heuristic", "random"], rows))
    print(f"\n{len(args.seeds)} seeds x {args.iters * 2000} env steps per run; eval: {args.episodes} episodes of 100 "
          f"periods, common demand draws; mean ± std over seeds of the mean episode cost (lower is better)")
    print(f"total time {time.time() - t0:.0f} s; machine: {machine()}; torch threads: 1")
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
