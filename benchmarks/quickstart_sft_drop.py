"""When does the quickstart's SFT learn the worked path? The SFT phase alone, per seed.

The quickstart's GRPO only pays when its SFT init can already work a problem out reliably. In SFT
that skill arrives late and suddenly: the training loss sits on a plateau (~0.16-0.22: the model
chooses between answering at once and working the problem out, but copies the wrong operand from
the prompt in worked steps) and then drops to ~0.09 once the copy is learned. This script runs only
the recipe's SFT phase (same batches, seeding and schedule as ``warmstart run``; no evaluation, no
checkpoints) and prints, per seed, the step at which the running loss first falls below
``--threshold``, the loss over the last ``--tail`` steps, and the phase's wall and CPU time: the
figures to compare SFT recipes by (a run that ends above the threshold has not learned the worked path).

    OMP_NUM_THREADS=1 python benchmarks/quickstart_sft_drop.py --seeds 0 1 2 --set policy.threads=1 [--set phases.sft.batch_size=64 ...]
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


def sft_curve(recipe) -> tuple[list[float], dict]:
    """Run the recipe's first SFT phase exactly as the engine would; returns its per-step losses
    and timings."""
    from warmstart.engine.run import build_context, seed_everything, step_seed
    from warmstart.registry import PHASES

    ctx = build_context(recipe)
    pcfg = next(p for p in recipe.phases if p.kind == "sft")
    phase = PHASES.get("sft").factory(pcfg, ctx)
    phase.on_start(0)
    losses, tokens = [], 0
    t0, c0 = time.time(), time.process_time()
    for k in range(pcfg.steps):  # the engine's loop: reseed from (seed, global step) before each step
        seed_everything(step_seed(recipe.seed, k))
        m = phase.step(k, k)
        losses.append(m["loss"])
        tokens += m["tokens"]
    phase.on_end()
    return losses, {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0, "tokens": tokens}


def drop_step(losses: list[float], threshold: float, window: int) -> int | None:
    """First step (1-based) at which the mean loss of the last ``window`` steps is below ``threshold``."""
    for i in range(window, len(losses) + 1):
        if statistics.fmean(losses[i - window:i]) < threshold:
            return i
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, repeatable")
    ap.add_argument("--threshold", type=float, default=0.12, help="running loss below which the worked path counts as learned")
    ap.add_argument("--window", type=int, default=25, help="steps in the running mean")
    ap.add_argument("--tail", type=int, default=50, help="steps averaged for the final loss")
    ap.add_argument("--curves", default=None, help="write every seed's per-step losses to this JSON file")
    args = ap.parse_args()
    cmd = "python benchmarks/quickstart_sft_drop.py " + " ".join(sys.argv[1:])

    from warmstart.engine.config import load_recipe

    rows, curves = [], {}
    for seed in args.seeds:
        recipe, _ = load_recipe(args.recipe, [f"seed={seed}", *args.sets])
        losses, t = sft_curve(recipe)
        curves[seed] = losses
        row = {"seed": seed, "drop_step": drop_step(losses, args.threshold, args.window), "steps": len(losses),
               "final_loss": statistics.fmean(losses[-args.tail:]), **t}
        rows.append(row)
        trace = " ".join(f"{statistics.fmean(losses[max(0, i - args.window):i]):.3f}" for i in range(50, len(losses) + 1, 50))
        print(json.dumps(row), f"\n  running loss every 50 steps: {trace}", flush=True)
        if args.curves:  # after every seed, so an interrupted sweep keeps what it measured
            Path(args.curves).write_text(json.dumps(curves))

    print(f"\n# {cmd}")
    print(f"drop = first step whose {args.window}-step running loss < {args.threshold}; final = mean of the last {args.tail} steps")
    print(f"{'seed':>4} {'steps':>6} {'drop step':>10} {'final loss':>11} {'tokens':>9} {'wall s':>7} {'cpu s':>7} {'tok/cpu-s':>10}")
    for r in rows:
        d = r["drop_step"] if r["drop_step"] is not None else "none"
        print(f"{r['seed']:>4} {r['steps']:>6} {d:>10} {r['final_loss']:>11.3f} {r['tokens']:>9} {r['wall_s']:>7.0f} "
              f"{r['cpu_s']:>7.0f} {r['tokens'] / r['cpu_s']:>10.0f}")
    print(f"learned (final loss < {args.threshold}): {sum(r['final_loss'] < args.threshold for r in rows)} of {len(rows)}")


if __name__ == "__main__":
    main()
