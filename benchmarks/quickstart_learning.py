"""Does GRPO lift held-out greedy accuracy over its SFT init? The quickstart, over several seeds.

Runs ``recipes/quickstart.yaml`` once per seed (each run is the whole pipeline: tiny Llama from a
config -> SFT -> GRPO, with evaluations on the held-out problems), then prints a table of greedy
accuracy, pass@k and the share of worked answers for the SFT init and the final policy, the gain,
and the wall time of each run and of its parts (each phase's steps, each evaluation, read from the run's
``metrics.jsonl``). Targets: a gain >= 30 points for every seed (issue 17); the whole run <= 4 minutes
on an idle machine at torch's default thread count (issue 19).

    python benchmarks/quickstart_learning.py --seeds 0 1 2 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def phase_times(run_dir: Path) -> dict[str, float]:
    """Seconds spent in each phase's steps (the sum of their ``time_step_s``) and in each evaluation
    (``eval <label>``), from the run's metrics log; checkpoint writes are the rest of the wall time."""
    out: dict[str, float] = {}
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r.get("phase") == "eval":
                if "after" in r:  # during-phase evaluations are inside the phase's step times
                    out[f"eval {r['after']}"] = out.get(f"eval {r['after']}", 0.0) + r.get("eval_time_s", 0.0)
            elif "time_step_s" in r:
                out[r["phase"]] = out.get(r["phase"], 0.0) + r["time_step_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, repeatable")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-quickstart"))
    args = ap.parse_args()
    cmd = "python benchmarks/quickstart_learning.py " + " ".join(sys.argv[1:])

    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    rows = []
    for seed in args.seeds:
        recipe, raw = load_recipe(args.recipe, [f"seed={seed}", *args.sets])
        run_dir = Path(args.out) / f"seed-{seed}-{time.strftime('%H%M%S')}"
        t0 = time.time()
        s = run_recipe(recipe, raw, run_dir=run_dir, quiet=True)
        wall = time.time() - t0
        i, f = s["init"], s["final"]
        rows.append({"seed": seed, "init_acc": i["accuracy"], "final_acc": f["accuracy"],
                     "init_pass": i["pass@k"], "final_pass": f["pass@k"], "k": f.get("k"),
                     "init_worked": i.get("worked"), "final_worked": f.get("worked"), "wall_s": wall,
                     "n": f["n"], "run_dir": str(run_dir), "parts_s": phase_times(run_dir)})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n# {cmd}")
    print(f"held-out problems per eval: {rows[0]['n']}; pass@k with k={rows[0]['k']}")
    hdr = f"{'seed':>4} {'SFT acc':>8} {'GRPO acc':>9} {'gain':>7} {'SFT pass@k':>11} {'GRPO pass@k':>12} {'SFT worked':>11} {'GRPO worked':>12} {'wall s':>7}"
    parts = list(dict.fromkeys(k for r in rows for k in r["parts_s"]))
    print(hdr + "".join(f" {p + ' s':>{max(8, len(p) + 2)}}" for p in parts))
    for r in rows:
        print(f"{r['seed']:>4} {r['init_acc']:>8.3f} {r['final_acc']:>9.3f} {100 * (r['final_acc'] - r['init_acc']):>+7.1f} "
              f"{r['init_pass']:>11.3f} {r['final_pass']:>12.3f} {r['init_worked']:>11.3f} {r['final_worked']:>12.3f} {r['wall_s']:>7.0f}"
              + "".join(f" {r['parts_s'].get(p, float('nan')):>{max(8, len(p) + 2)}.1f}" for p in parts))
    gains = [100 * (r["final_acc"] - r["init_acc"]) for r in rows]
    sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"mean gain {statistics.mean(gains):+.1f} +- {sd:.1f} points; max wall {max(r['wall_s'] for r in rows):.0f} s")


if __name__ == "__main__":
    main()
