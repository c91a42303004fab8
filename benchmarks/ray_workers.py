"""Ray rollout workers vs in-process sampling: the actor path's overhead, and identical episodes.

The quickstart recipe's GRPO phase (32 prompts x G = 8 per step, chain arithmetic), shortened: a
brief SFT so completions have realistic lengths, then ``--steps`` GRPO steps, in these modes:

  in-process              the default (1 shard): the quickstart's numbers
  in-process, shards 2    the in-process twin of every 2-shard Ray run
  ray, 1 worker, shard 1  must log exactly the in-process numbers
  ray, 1 worker, 2 shards must log exactly the 'shards 2' numbers
  ray, 2 workers          (2 shards) the same again, sampling in parallel

Modes run interleaved, ``--repeats`` times each; the table gives the median GRPO step time and
sampling time, their ratio to in-process, and whether every logged number (rewards, losses, KL,
entropy ... all but timings) equals the mode's in-process twin -- the identical-episodes check at run
level. A direct check compares the episodes of one rollout token for token and log-prob for log-prob.
One local Ray instance (``num_cpus=2``) serves every Ray mode; each run creates and kills its actors
(that cost is the ``start_s`` column).

    OMP_NUM_THREADS=1 RAY_memory_monitor_refresh_ms=0 .venv/bin/python benchmarks/ray_workers.py --steps 3 --sft-steps 10

``RAY_memory_monitor_refresh_ms=0`` stops Ray's out-of-memory killer, which counts the whole machine's
memory: on a shared machine other people's jobs got these 300 MB actors killed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMING = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s"}
MODES = {  # name: (scale overrides, the in-process twin whose numbers it must reproduce)
    "in-process": ({}, None),
    "in-process, shards 2": ({"shards": 2}, None),
    "ray, 1 worker, 1 shard": ({"backend": "ray", "workers": 1, "shards": 1}, "in-process"),
    "ray, 1 worker, 2 shards": ({"backend": "ray", "workers": 1, "shards": 2}, "in-process, shards 2"),
    "ray, 2 workers": ({"backend": "ray", "workers": 2}, "in-process, shards 2"),
}


def run_mode(scale: dict, steps: int, sft_steps: int, run_dir: Path) -> tuple[list[dict], float]:
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    sets = [f"phases.sft.steps={sft_steps}", f"phases.grpo.steps={steps}", "eval.n=16", "eval.samples=1",
            "checkpoint.every=0", *[f"scale.{k}={v}" for k, v in scale.items()]]
    recipe, raw = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides=sets)
    t0 = time.time()
    run_recipe(recipe, raw, run_dir=run_dir, quiet=True)
    wall = time.time() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, wall


def direct_check(ray_workers_cls) -> bool:
    """One rollout of 32 prompts x 8: in-process with 2 shards vs 2 Ray workers, episode for episode."""
    import torch

    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import build_context
    from warmstart.rollout import Sampling, rollout
    from warmstart.rollout.workers import InProcessWorkers

    recipe, _ = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    ctx = build_context(recipe)
    probs = ctx.task.sample_problems(32, torch.Generator().manual_seed(0))

    def key(workers):
        eps, _ = rollout(ctx.policy, probs, samples=8, sampling=Sampling(ctx.task.max_new_tokens),
                         generator=torch.Generator().manual_seed(1), workers=workers)
        return [(e.group, e.ids, e.logprobs) for e in eps]

    w = ray_workers_cls(ctx.policy, workers=2)
    try:
        return key(InProcessWorkers(2)) == key(w)
    finally:
        w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="GRPO steps per run")
    ap.add_argument("--sft-steps", type=int, default=60, help="SFT steps before GRPO (realistic completion lengths)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import ray
    import torch

    from warmstart.rollout.workers import RayWorkers

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    results: dict[str, list] = {m: [] for m in MODES}
    logged: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, (scale, _) in MODES.items():
                rows, wall = run_mode(scale, args.steps, args.sft_steps, Path(tmp) / f"{r}-{len(results[name])}-{hash(name)}")
                grpo = [x for x in rows if x.get("phase") == "grpo"]
                # the first GRPO step also pays the first weight sync; report the steady state
                step_s = statistics.median(x["time_step_s"] for x in grpo[1:])
                results[name].append((step_s, wall))
                logged.setdefault(name, [{k: v for k, v in x.items() if k not in TIMING} for x in rows])
                print(f"  repeat {r} {name}: step {step_s:.3f} s, run {wall:.1f} s", flush=True)
        same_direct = direct_check(RayWorkers)
    ray.shutdown()

    base = statistics.median(s for s, _ in results["in-process"])
    print(f"\nGRPO on quickstart ({args.steps} steps after {args.sft_steps} SFT steps; 32 prompts x G 8), "
          f"median of {args.repeats}, load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| mode | step s (median) | ratio to in-process | run wall s (median) | logged numbers identical to |")
    print("| --- | --- | --- | --- | --- |")
    for name, (_, twin) in MODES.items():
        step = statistics.median(s for s, _ in results[name])
        wall = statistics.median(w for _, w in results[name])
        same = "-" if twin is None else f"{twin}: {'yes' if logged[name] == logged[twin] else 'NO'}"
        print(f"| {name} | {step:.3f} | {step / base:.2f} | {wall:.1f} | {same} |")
    print(f"\ndirect check, one rollout of 32 x 8 (ids and log-probs): in-process shards 2 == 2 Ray workers: "
          f"{'yes' if same_direct else 'NO'}")
    print(f"\n`OMP_NUM_THREADS=1 RAY_memory_monitor_refresh_ms=0 .venv/bin/python benchmarks/{Path(__file__).name} "
          f"{' '.join(shlex.quote(a) for a in sys.argv[1:])}`")


if __name__ == "__main__":
    main()
