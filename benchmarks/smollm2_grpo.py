"""GRPO on the real SmolLM2-135M-Instruct: held-out accuracy before/after over seeds, wall time per
step, and LoRA against full fine-tuning (memory, tokens/s, learning curve).

Runs ``recipes/smollm2-grpo.yaml`` once per (variant, seed), each in its own process (so its peak
resident memory is its own; read with ``os.wait4``), one after another, or all at once with
``--parallel`` (then their wall times share the CPU). Variants: ``lora`` (the recipe as written:
peft adapters, r=16 on every linear layer, lr 3e-4) and ``full`` (every weight trains, lr 3e-5). Prints a row per run, then a table per variant: greedy held-out
accuracy of the pretrained model and after GRPO, the gain, median wall seconds per GRPO step, the
median sampling / training / overall tokens per second, trainable parameters, peak RSS, and the
learning curve (mean reward per step).

    python benchmarks/smollm2_grpo.py --variants lora --seeds 0 1 2
    python benchmarks/smollm2_grpo.py --variants lora full --seeds 0 --parallel
    python benchmarks/smollm2_grpo.py --probe 64 96    # sizing: one greedy eval (64 problems, 96 tokens), one step
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "lora": [],  # the recipe as written
    "full": ["policy.lora=null", "phases.grpo.lr=3.0e-5"],
}


def start(variant: str, seed: int, out: Path, sets: list[str]):
    """Start one run in its own process; returns what :func:`finish` needs."""
    run_dir = out / f"{variant}-seed{seed}"
    args = [sys.executable, "-m", "warmstart.engine.cli", "run", str(ROOT / "recipes" / "smollm2-grpo.yaml"),
            "--run-dir", str(run_dir), "--overwrite", "--quiet", "--set", f"seed={seed}"]
    for s in VARIANTS[variant] + sets:
        args += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = open(out / f"{variant}-seed{seed}.log", "w")
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return variant, seed, run_dir, p, time.time()


def finish(variant, seed, run_dir, p, t0, init: dict | None = None) -> dict:
    """Wait for one run (its own peak RSS from ``os.wait4``) and read its summary and metrics. ``init``: the
    pretrained model's evaluation from an earlier run, for a run started with ``eval.before=false``."""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        log = (run_dir.parent / f"{variant}-seed{seed}.log").read_text(errors="replace")
        raise SystemExit(f"{variant} seed {seed} failed:\n{log[-3000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    s["init"] = s.get("init") or init
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["phase"] == "grpo"]
    cfg = (run_dir / "config.yaml").read_text()
    return {
        "variant": variant, "seed": seed, "init": s["init"], "init_acc": s["init"]["accuracy"], "final_acc": s["final"]["accuracy"],
        "n": s["final"]["n"], "step_s": statistics.median(r["time_step_s"] for r in steps),
        "sample_tok_s": statistics.median(r["sample_tokens_per_s"] for r in steps),
        "train_tok_s": statistics.median(r["train_tokens_per_s"] for r in steps),
        "tok_s": statistics.median(r["tokens_per_s"] for r in steps),
        "reward_curve": [round(r["reward"], 3) for r in steps],
        "acc_curve": [round(r["accuracy"], 3) for r in steps],
        "completion_tokens": [round(r["completion_tokens"], 1) for r in steps],
        "eval_s": [r["eval_time_s"] for r in rows if r["phase"] == "eval"],
        "final_mean_tokens": s["final"].get("mean_tokens"),
        "peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall, "run_dir": str(run_dir),
        "trainable": _trainable(run_dir), "lora": "lora:" in cfg,
    }


def _trainable(run_dir: Path) -> int:
    """Trainable parameters of the final policy (adapter tensors for LoRA, every weight otherwise)."""
    from safetensors import safe_open

    final = run_dir / "final"
    f = final / "adapter_model.safetensors"
    f = f if f.exists() else final / "model.safetensors"
    with safe_open(str(f), "pt") as st:
        return sum(_prod(st.get_slice(k).get_shape()) for k in st.keys())


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def probe(n: int, max_new: int, sets: list[str]) -> None:
    """Size the recipe before running it: one greedy evaluation of ``n`` held-out problems with a
    ``max_new``-token budget (time, accuracy, answer lengths, how many hit the budget or carry the
    answer marker), then one GRPO step of the recipe (time, its metrics) and this process's peak RSS."""
    import resource

    import torch

    sys.path.insert(0, str(ROOT))
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import build_context
    from warmstart.registry import PHASES
    from warmstart.rollout import Sampling, rollout

    torch.set_num_threads(1)
    recipe, _ = load_recipe(ROOT / "recipes" / "smollm2-grpo.yaml", sets + [f"task.n_test={n}", f"eval.n={n}"])
    ctx = build_context(recipe)
    problems = ctx.eval_task.eval_problems(n)
    t = time.time()
    eps, _ = rollout(ctx.policy, problems, sampling=Sampling(max_new, 0.0, batch_size=n))
    lens = [len(e.ids) for e in eps]
    print(json.dumps({"n": n, "max_new_tokens": max_new, "eval_s": round(time.time() - t, 1),
                      "accuracy": sum(ctx.eval_task.is_correct(e.text, p.answer) for e, p in zip(eps, problems)) / n,
                      "tokens_median": statistics.median(lens), "at_budget": sum(x >= max_new for x in lens),
                      "with_marker": sum(ctx.eval_task.answer_marker in e.text for e in eps)}), flush=True)
    phase = PHASES.get("grpo").factory(recipe.phases[0], ctx)
    phase.on_start(0)
    t = time.time()
    m = phase.step(0, 0)
    print(json.dumps({"step_s": round(time.time() - t, 1), **{k: v for k, v in m.items() if isinstance(v, (int, float))}}))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["lora"], choices=sorted(VARIANTS))
    ap.add_argument("--parallel", action="store_true", help="run every (variant, seed) at once (wall times then share the CPU)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, repeatable")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-smollm2-grpo"))
    ap.add_argument("--json", default=None, help="append each row to this JSONL file")
    ap.add_argument("--init-once", action="store_true",
                    help="evaluate the pretrained model in the first run only (greedy decoding of the same held-out "
                         "set: the same for every seed and variant) and reuse it; not with --parallel")
    ap.add_argument("--probe", type=int, nargs=2, metavar=("N", "TOKENS"), default=None,
                    help="size the recipe instead: one greedy eval of N held-out problems at TOKENS new tokens, one GRPO step")
    args = ap.parse_args()
    if args.probe:
        return probe(*args.probe, args.sets)
    cmd = "python benchmarks/smollm2_grpo.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(v, s) for v in args.variants for s in args.seeds]
    started = [start(v, s, out, args.sets) for v, s in jobs] if args.parallel else None
    init = None
    for i, (v, s) in enumerate(jobs):
        skip = ["eval.before=false"] if args.init_once and init is not None else []
        r = finish(*(started[i] if started else start(v, s, out, args.sets + skip)), init=init)
        init = r["init"]
        rows.append(r)
        print(json.dumps(r), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    print(f"\n# {cmd}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min); {'all runs at once' if args.parallel else 'one run at a time'}")
    print(f"{'variant':>7} {'seed':>4} {'acc before':>10} {'after':>6} {'gain':>6} {'s/step':>7} {'sample tok/s':>12} "
          f"{'train tok/s':>11} {'tok/s':>6} {'trainable':>10} {'peak RSS MB':>11}  reward per step")
    for r in rows:
        print(f"{r['variant']:>7} {r['seed']:>4} {r['init_acc']:>10.3f} {r['final_acc']:>6.3f} "
              f"{100 * (r['final_acc'] - r['init_acc']):>+6.1f} {r['step_s']:>7.1f} {r['sample_tok_s']:>12.1f} "
              f"{r['train_tok_s']:>11.1f} {r['tok_s']:>6.1f} {r['trainable']:>10,} {r['peak_rss_mb']:>11.0f}  "
              f"{' '.join(f'{x:.2f}' for x in r['reward_curve'])}")
    for variant in args.variants:
        vs = [r for r in rows if r["variant"] == variant]
        gains = [100 * (r["final_acc"] - r["init_acc"]) for r in vs]
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"{variant}: mean gain {statistics.mean(gains):+.1f} +- {sd:.1f} points over {len(vs)} seeds "
              f"(n={vs[0]['n']} held-out problems), median {statistics.median(r['step_s'] for r in vs):.1f} s per step")


if __name__ == "__main__":
    main()
