"""PPO on CartPole-v1: final eval return after <= 100k env steps, 5 seeds (target: >= 475 in >= 4/5).

Runs recipes/ppo-cartpole.yaml through the engine (run dir, checkpoints, eval) once per seed and
prints a table plus the command line. Each seed takes about a minute on one CPU core.

    python benchmarks/ppo_cartpole.py [--seeds 1 2 3 4 5] [--out runs/bench-ppo-cartpole]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _vector_common import command_line, machine, run, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--episodes", type=int, default=20, help="eval episodes per seed (greedy actions)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ppo-cartpole"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, finals = [], []
    for seed in args.seeds:
        t = time.time()
        summary, train = run("ppo-cartpole", [f"seed={seed}", f"eval.n={args.episodes}"], args.out / f"seed-{seed}")
        final = summary["final"]
        steps = train[-1]["env_steps"]
        # first env-step count at which the training return (mean of the last 20 episodes) hit 475
        hit = next((r["env_steps"] for r in train if (r.get("episodic_return") or 0) >= 475), None)
        sps = steps / sum(r["time_step_s"] for r in train)
        finals.append(final["mean_return"])
        rows.append([seed, steps, f"{final['mean_return']:.1f} ± {final['std_return']:.1f}",
                     hit if hit is not None else "-", f"{sps:.0f}", f"{time.time() - t:.0f}"])
    ok = sum(f >= 475 for f in finals)
    print(table(["seed", "env steps", f"eval return ({args.episodes} ep.)", "train return >= 475 at", "env-steps/s", "wall s"], rows))
    print(f"\nseeds with eval return >= 475: {ok}/{len(finals)} (target >= 4/5); mean {np.mean(finals):.1f}")
    print(f"machine: {machine()}; torch threads: 1")
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
