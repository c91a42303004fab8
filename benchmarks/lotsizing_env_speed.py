"""Lot-sizing env steps per second: the numpy vector env vs a Python loop over single envs.

Three ways to step N = ``--envs`` lot-sizing envs with random actions, timed interleaved (each
repeat runs all of them once, in turn) and reported as the median over ``--repeats``:

* ``before``: the single env of commit ``--before-commit`` (a Python loop over machines in every
  step), N of them in :class:`warmstart.tasks.gym.VecEnv` (what training used before);
* ``loop``: today's single env (the vectorised transition with a batch of 1) in ``VecEnv``;
* ``vector``: :class:`warmstart.tasks.lotsizing.LotSizingVecEnv`, all N envs in one numpy call
  (what ``GymTask.make_envs`` now builds for ``warmstart/LotSizing-v0``).

    python benchmarks/lotsizing_env_speed.py [--preset paper-15x5] [--envs 40] [--steps 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _vector_common import ROOT, command_line, load_average, machine, table


def _before_env_class(commit: str):
    """The LotSizingEnv class of ``commit`` (loaded from git under another module name)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:warmstart/tasks/lotsizing.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "lotsizing_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("lotsizing_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lotsizing_before"] = mod
    spec.loader.exec_module(mod)
    return mod.LotSizingEnv


def steps_per_second(venv, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    nvec = venv.single_action_space.nvec
    acts = rng.integers(0, nvec, size=(steps, venv.num_envs, len(nvec)))
    venv.reset(seed=seed)
    t0 = time.perf_counter()
    for t in range(steps):
        venv.step(acts[t])
    return steps * venv.num_envs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="paper-15x5")
    ap.add_argument("--envs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=500, help="vector steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before-commit", default="7501748", help="the commit whose single env is 'before'")
    args = ap.parse_args()
    from warmstart.tasks.gym import VecEnv
    from warmstart.tasks.lotsizing import LotSizingEnv, LotSizingVecEnv

    before_cls = _before_env_class(args.before_commit)
    keys = ("post_decision_state",)
    makers = {
        "before": lambda: VecEnv([before_cls(preset=args.preset) for _ in range(args.envs)], info_keys=keys),
        "loop": lambda: VecEnv([LotSizingEnv(preset=args.preset) for _ in range(args.envs)], info_keys=keys),
        "vector": lambda: LotSizingVecEnv(args.envs, preset=args.preset, info_keys=keys),
    }
    sps: dict[str, list[float]] = {k: [] for k in makers}
    for r in range(args.repeats):
        for k, make in makers.items():
            sps[k].append(steps_per_second(make(), args.steps, seed=r))
    med = {k: float(np.median(v)) for k, v in sps.items()}
    rows = [[k, f"{med[k]:,.0f}", f"{med[k] / med['before']:.1f}x"] for k in makers]
    print(table(["implementation", "env steps/s (median)", "vs before"], rows))
    print(f"\npreset {args.preset}, {args.envs} envs x {args.steps} steps, random actions, median of {args.repeats} "
          f"interleaved repeats; 'before' = commit {args.before_commit}'s env (that preset's sizes)")
    print(f"load average at the end: {load_average()}; machine: {machine()}; command: {command_line()}")


if __name__ == "__main__":
    main()
