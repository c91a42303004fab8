"""PDPPO vs PPO at the PDPPO paper's protocol: best-checkpoint test cost on lot-sizing.

Recipes ``pdppo-lotsizing-paper`` and ``ppo-lotsizing-paper`` (METHODS.md G: normalised Monte-Carlo
returns, A = G - min(V, V_post) for PDPPO and G - V for PPO, 60 epochs over each 4,000-step batch,
2 x 128 networks, Adam with weight decay 1e-3, actor lr 5.5e-4, critics 1e-3, grad clip 1), each run
``--iters`` x 4,000 env steps (125 = the paper's 500k), the weights of the best training rollout kept
and tested on ``--episodes`` held-out episodes (eval seed fixed: the same demand draws and initial
states for every run). Cells are ``preset:demand`` with demand ``stoch`` (Binomial(20, 0.4)) or
``det`` (exactly 8), run in the order given, seeds alternating between the arms, so a budget cut
leaves balanced arms. Every finished run is appended to ``--results`` (JSON lines) and skipped when
the command is run again, so the grid can run in the background and be resumed; ``--report`` only
prints the table of what is there. Each kept policy is tested twice on the same episodes: with greedy
actions (argmax per machine: the engine's eval of the recipe) and with actions sampled from the
policy (the policy as it acted in training, where the best checkpoint was chosen); the sampled
tests are stored in ``--results`` with ``.retest`` inserted before the suffix.

    python benchmarks/pdppo_paper_protocol.py [--cells paper-15x5:stoch paper-15x5:det paper-5x2:stoch paper-5x2:det]
        [--seeds 1 2 3 4 5] [--iters 125] [--episodes 100] [--results runs/pdppo-paper/results.jsonl] [--report]
        [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _vector_common import command_line, load_average, machine, run, table
from pdppo_vs_ppo import reference_costs, welch_t

CELLS = ["paper-15x5:stoch", "paper-15x5:det", "paper-5x2:stoch", "paper-5x2:det"]
ARMS = ("pdppo", "ppo")


def load(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_one(cell: str, algo: str, seed: int, args) -> dict:
    preset, demand = cell.split(":")
    sets = [f"seed={seed}", f"phases.0.steps={args.iters}", f"eval.n={args.episodes}",
            f"task.env_kwargs.preset={preset}", f"task.env_kwargs.stochastic_demand={str(demand == 'stoch').lower()}",
            *args.sets]
    t0 = time.time()
    summary, train = run(f"{algo}-lotsizing-paper", sets, args.out / f"{preset}-{demand}-{algo}-{seed}")
    last = train[-1]
    return {"cell": cell, "algo": algo, "seed": seed, "iters": args.iters, "episodes": args.episodes, "sets": args.sets,
            "test_cost": summary["final"]["mean_cost"], "test_cost_std": summary["final"]["std_cost"],
            "best_train_return": last.get("best_return"), "last_train_return": last.get("episodic_return"),
            "env_steps": last["env_steps"], "wall_s": round(time.time() - t0, 1)}


def retest(row: dict, args) -> dict:
    """Test the kept (best) policy of a finished run with sampled actions on the same episodes."""
    import yaml

    from warmstart.config import EvalConfig
    from warmstart.policies import load_policy
    from warmstart.tasks.gym import GymTask, GymTaskConfig

    preset, demand = row["cell"].split(":")
    run_dir = args.out / f"{preset}-{demand}-{row['algo']}-{row['seed']}"
    policy = load_policy(run_dir / "final")
    # the env exactly as the run had it (the recipe's env_kwargs and any --set on them)
    env_kwargs = yaml.safe_load((run_dir / "config.yaml").read_text())["task"]["env_kwargs"]
    task = GymTask(GymTaskConfig(kind="gym", env_id="warmstart/LotSizing-v0", greedy_eval=False, env_kwargs=env_kwargs),
                   split="test")
    ev = task.evaluate(policy, EvalConfig(n=row["episodes"]))
    return {k: row[k] for k in ("cell", "algo", "seed", "iters", "episodes")} | {"sets": row.get("sets", []),
                                                                               "test_cost_sampled": ev["mean_cost"]}


def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("cell", "algo", "seed", "iters", "episodes")) and a.get("sets", []) == b.get("sets", [])


def report(rows: list[dict], episodes: int, with_refs: bool) -> None:
    out = []

    def ms(x):
        return f"{x.mean():.1f} ± {x.std(ddof=1):.1f}" if len(x) > 1 else (f"{x[0]:.1f}" if len(x) else "-")

    for cell in dict.fromkeys(r["cell"] for r in rows):
        preset, demand = cell.split(":")
        refs = [f"{v:.1f}" for v in reference_costs(preset, demand == "stoch", episodes)[::-1]] if with_refs else ["", ""]
        wall = np.median([r["wall_s"] for r in rows if r["cell"] == cell])
        for key, how in (("test_cost", "greedy"), ("test_cost_sampled", "sampled")):
            c = {a: [r[key] for r in rows if r["cell"] == cell and r["algo"] == a and key in r] for a in ARMS}
            pd, pp = np.array(c["pdppo"]), np.array(c["ppo"])
            diff = (f"{pd.mean() - pp.mean():+.1f} ({100 * (pd.mean() - pp.mean()) / pp.mean():+.1f}%)"
                    if len(pd) and len(pp) else "-")
            t = f"{welch_t(c['pdppo'], c['ppo']):+.2f}" if len(pd) > 1 and len(pp) > 1 else "-"
            out.append([preset, "Binomial(20,0.4)" if demand == "stoch" else "deterministic 8", how,
                        f"{len(pd)}/{len(pp)}", ms(pd), ms(pp), diff, t, *refs, f"{wall:.0f}"])
    print(table(["setting", "demand", "test actions", "seeds PDPPO/PPO", "PDPPO test cost", "PPO test cost",
                 "PDPPO − PPO", "Welch t", "base-stock heuristic", "random", "s per run (median)"], out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", nargs="+", default=CELLS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--iters", type=int, default=125, help="iterations per run (x 4,000 env steps)")
    ap.add_argument("--episodes", type=int, default=100, help="test episodes of the best checkpoint")
    ap.add_argument("--out", type=Path, default=Path("runs/pdppo-paper"))
    ap.add_argument("--results", type=Path, default=None, help="JSON lines of finished runs (default: OUT/results.jsonl)")
    ap.add_argument("--report", action="store_true", help="print the table of the finished runs and exit")
    ap.add_argument("--no-refs", action="store_true", help="skip the base-stock and random references")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="recipe override for every run, repeatable (e.g. task.env_kwargs.observe_time=false for "
                         "the authors' raw states); use another --out per variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = args.results or args.out / "results.jsonl"
    bad = [c for c in args.cells if c.count(":") != 1 or c.split(":")[1] not in ("stoch", "det")]
    if bad:
        ap.error(f"--cells {bad}: each cell is PRESET:stoch or PRESET:det, e.g. paper-15x5:stoch")
    if not args.report:
        results.parent.mkdir(parents=True, exist_ok=True)
        for cell in args.cells:
            for seed in args.seeds:
                for algo in ARMS:
                    done = load(results)
                    if any(r["cell"] == cell and r["algo"] == algo and r["seed"] == seed and r["iters"] == args.iters
                           and r["episodes"] == args.episodes and r.get("sets", []) == args.sets for r in done):
                        continue
                    row = run_one(cell, algo, seed, args)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"  {cell} {algo:5s} seed {seed}: test cost {row['test_cost']:.1f} "
                          f"(best train return {row['best_train_return']:.1f}, {row['wall_s']:.0f} s)", flush=True)
    rows = [r for r in load(results) if r["iters"] == args.iters and r["episodes"] == args.episodes
            and r["cell"] in args.cells and r["seed"] in args.seeds and r.get("sets", []) == args.sets]
    retests = results.with_suffix(".retest" + results.suffix)
    for r in rows:  # the sampled test of each kept policy (done once, stored)
        done = load(retests)
        if not any(_same(r, x) for x in done):
            with retests.open("a") as f:
                f.write(json.dumps(retest(r, args)) + "\n")
    for r in rows:
        r.update(next(x for x in load(retests) if _same(r, x)))
    if not rows:
        print(f"no finished runs in {results} for these cells, seeds and budget")
        return
    print()
    report(rows, args.episodes, with_refs=not args.no_refs)
    print(f"\n{args.iters * 4000:,} env steps per run; test: best checkpoint (best training rollout) on {args.episodes} "
          f"episodes of 100 periods, common demand draws and initial states; mean ± std over seeds of the mean "
          f"episode cost (lower is better)")
    print(f"load average now: {load_average()}; machine: {machine()}; torch threads: 1")
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
