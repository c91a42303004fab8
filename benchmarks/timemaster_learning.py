"""TimeMaster: does GRPO lift held-out UCR accuracy over its SFT init, and is the image view at least
as good as the numbers view? Runs ``recipes/timemaster.yaml`` (plots) and
``recipes/timemaster-numbers.yaml`` (digits) once per seed -- each run is the whole pipeline (tiny VLM
from a config -> mixed perception + UCR SFT -> GRPO, greedy evaluations on the fixed test subsets) --
and prints, per view and seed, accuracy per dataset after SFT (init) and after GRPO (final), their
mean, the gain, and the wall time. Same recipe budget for both views.

    OMP_NUM_THREADS=1 python benchmarks/timemaster_learning.py --seeds 0 1 2 [--views image numbers] [--set key=value ...]
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

RECIPES = {"image": "timemaster.yaml", "numbers": "timemaster-numbers.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--views", nargs="+", default=["image", "numbers"], choices=list(RECIPES))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, repeatable")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-timemaster"))
    args = ap.parse_args()
    cmd = "OMP_NUM_THREADS=1 python benchmarks/timemaster_learning.py " + " ".join(sys.argv[1:])

    import torch

    torch.set_num_threads(1)
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    rows = []
    for view in args.views:
        for seed in args.seeds:
            recipe, raw = load_recipe(ROOT / "recipes" / RECIPES[view], [f"seed={seed}", *args.sets])
            run_dir = Path(args.out) / f"{view}-seed-{seed}-{time.strftime('%H%M%S')}"
            t0 = time.time()
            s = run_recipe(recipe, raw, run_dir=run_dir, quiet=True)
            row = {"view": view, "seed": seed, "wall_s": time.time() - t0, "run_dir": str(run_dir),
                   "init": {k: v for k, v in s["init"].items() if k.startswith("accuracy")},
                   "final": {k: v for k, v in s["final"].items() if k.startswith("accuracy")}}
            rows.append(row)
            print(json.dumps(row), flush=True)

    datasets = sorted(k.split("/", 1)[1] for k in rows[0]["final"] if "/" in k)
    print(f"\n# {cmd}")
    print("| view | seed | " + " | ".join(f"{d} SFT -> GRPO" for d in datasets) + " | mean SFT | mean GRPO | gain (points) | wall s |")
    print("| --- | ---: | " + " | ".join("---:" for _ in datasets) + " | ---: | ---: | ---: | ---: |")
    for r in rows:
        per = " | ".join(f"{r['init'][f'accuracy/{d}']:.3f} -> {r['final'][f'accuracy/{d}']:.3f}" for d in datasets)
        gi, gf = r["init"]["accuracy_mean"], r["final"]["accuracy_mean"]
        print(f"| {r['view']} | {r['seed']} | {per} | {gi:.3f} | {gf:.3f} | {100 * (gf - gi):+.1f} | {r['wall_s']:.0f} |")
    for view in args.views:
        rs = [r for r in rows if r["view"] == view]
        gains = [100 * (r["final"]["accuracy_mean"] - r["init"]["accuracy_mean"]) for r in rs]
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        fin = statistics.mean(r["final"]["accuracy_mean"] for r in rs)
        ini = statistics.mean(r["init"]["accuracy_mean"] for r in rs)
        print(f"{view}: mean over seeds SFT {ini:.3f} -> GRPO {fin:.3f}, gain {statistics.mean(gains):+.1f} +- {sd:.1f} points; "
              f"max wall {max(r['wall_s'] for r in rs):.0f} s")


if __name__ == "__main__":
    main()
