"""Search (issue 4): accuracy vs generated tokens, PRM search vs best-of-N + ORM, expert iteration,
and search throughput -- all on held-out arithmetic from an SFT checkpoint.

Uses a run of ``recipes/search-expert-iteration.yaml`` (SFT -> ORM -> PRM -> expert iteration on
PRM-guided MCTS); runs it first unless ``--run-dir`` already holds one. Then:

1. scaling: every strategy (best_of_n+ORM, vote, weighted_vote+ORM, beam+PRM, mcts+PRM, revise+PRM)
   at ``--multiples`` x (one solution sampled at --temperature, in tokens) on ``--n`` held-out problems, from the SFT
   checkpoint (the policy before expert iteration; the RM phases do not change it);
2. expert iteration: greedy held-out accuracy of the SFT init vs after expert iteration;
3. throughput: MCTS expansions/s, best-of-N sampled tokens/s vs plain sampling of as many sequences.

    OMP_NUM_THREADS=1 python benchmarks/search_scaling.py [--run-dir runs/bench-search] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sft_checkpoint(run_dir: Path) -> Path:
    """The checkpoint at the end of the train_prm phase holds the SFT policy (RM phases leave it)."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    step = 0
    for p in cfg["phases"]:
        step += p.get("steps", 0)
        if p["kind"] == "train_prm":
            break
    d = run_dir / "checkpoints" / f"step-{step}"
    if not d.is_dir():
        raise SystemExit(f"{d} is missing: the run must keep its checkpoint at the end of train_prm")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-search"))
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "search-expert-iteration.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, repeatable")
    ap.add_argument("--init", default=None, help="reuse a finished SFT phase: its checkpoint (same task/policy/sft config) "
                    "becomes policy.path and the recipe's SFT phase runs 0 steps")
    ap.add_argument("--n", type=int, default=200, help="held-out problems for the scaling sweep")
    ap.add_argument("--multiples", default="1,2,4,8", help="budgets as multiples of one sampled solution's tokens")
    ap.add_argument("--strategies", default="best_of_n,vote,weighted_vote,beam,mcts,revise")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--final", default=None, help="how beam, MCTS and revision pick their answer: value (best-scored), "
                    "vote (score-weighted vote, the default) or visits (MCTS only)")
    ap.add_argument("--task-set", action="append", default=[], help="held-out task option, e.g. n_test=1000 (repeatable)")
    ap.add_argument("--keep-rows", action="store_true", help="keep --out's rows of strategies not re-run here")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "search_scaling.json"))
    ap.add_argument("--ei-only", action="store_true", help="only re-run expert iteration (with --set overrides of the "
                    "expert_iteration phase) from the SFT checkpoint and reward models of an existing --run-dir")
    args = ap.parse_args()
    cmd = "OMP_NUM_THREADS=1 python benchmarks/search_scaling.py " + " ".join(sys.argv[1:])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    run_dir = Path(args.run_dir)
    if args.ei_only:
        return expert_iteration_only(args, run_dir, cmd)
    t0 = time.time()
    if not (run_dir / "summary.json").exists():
        extra = [f"policy.path={args.init}", "phases.sft.steps=0"] if args.init else []
        recipe, raw = load_recipe(args.recipe, args.sets + extra + ["checkpoint.keep=4"])
        run_recipe(recipe, raw, run_dir=run_dir, quiet=True)
    t_recipe = time.time() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = sft_checkpoint(run_dir)

    from warmstart.engine.search_cli import SearchSession, paired_change, plot_scaling

    s = SearchSession(ckpt, args.recipe, n=args.n, sets=args.task_set, temperature=args.temperature)
    g = s.greedy()
    L = s.solution_tokens()  # the budget unit: one solution sampled at the search temperature
    budgets = [int(round(float(m) * L)) for m in args.multiples.split(",")]
    rows = [{"strategy": "greedy", "scorer": "none", "budget_tokens": int(round(g["tokens"])), "accuracy": g["accuracy"],
             "generated_tokens": g["tokens"], "time_s": g["time_s"], "tokens_per_s": g["tokens_per_s"]}]
    t1 = time.time()
    for strat in args.strategies.split(","):
        for b in budgets:
            rows.append(s.run(strat, b, **({"final": args.final} if args.final and strat in ("beam", "mcts", "revise") else {})))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("knobs", "correct")}), flush=True)
    t_scaling = time.time() - t1

    # throughput: best-of-N vs plain sampling of the same number of sequences, MCTS expansions/s
    from warmstart.rollout import Sampling, rollout

    nb = max(budgets) // max(int(round(L)), 1)
    gen = torch.Generator().manual_seed(0)
    _, plain = rollout(s.policy, s.problems, samples=nb, sampling=Sampling(s.task.max_new_tokens, args.temperature), generator=gen)
    bon = next((r for r in rows if r["strategy"] == "best_of_n" and r["budget_tokens"] == max(budgets)), None)
    mcts = next((r for r in rows if r["strategy"] == "mcts" and r["budget_tokens"] == max(budgets)), None)

    out = Path(args.out)
    if out.exists() and args.keep_rows:  # re-ran a subset: keep the other strategies' rows
        done = {r["strategy"] for r in rows}
        rows = [r for r in json.loads(out.read_text())["rows"] if r["strategy"] not in done] + rows
        args.strategies = ",".join(dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "greedy"))
    out.write_text(json.dumps({"rows": rows, "summary": {"init": summary["init"], "final": summary["final"]},
                               "plain_tokens_per_s": plain["sample_tokens_per_s"], "command": cmd}, indent=2, default=float))
    plot_scaling(rows, out.with_suffix(".png"), f"{Path(args.recipe).stem}: SFT checkpoint, n={args.n}")

    print(f"\n# {cmd}")
    print(f"SFT checkpoint {ckpt}; held-out n={args.n}; budget unit = one sampled solution = {L:.1f} tokens (greedy {g['tokens']:.1f}); T={args.temperature}")
    print(f"{'strategy':<14} {'scorer':<8} " + " ".join(f"{b:>11}" for b in budgets) + "   (accuracy @ budget tokens; measured tokens)")
    for strat in args.strategies.split(","):
        rs = [r for r in rows if r["strategy"] == strat]
        cells = " ".join(f"{r['accuracy']:.3f}/{r['generated_tokens']:>4.0f}" for r in rs)
        mono = all(b["accuracy"] >= a["accuracy"] for a, b in zip(rs, rs[1:]))
        # a fall counts when it exceeds 2 paired standard errors (same problems, consecutive budgets)
        steps = [paired_change(a, b) for a, b in zip(rs, rs[1:]) if "correct" in a and "correct" in b]
        worst = min(steps, key=lambda d: d[0] / max(d[1], 1e-9), default=(0.0, 0.0))
        sig = any(d < -2 * se for d, se in steps)
        print(f"{strat:<14} {rs[0]['scorer']:<8} {cells}   non-decreasing={mono}  "
              f"worst step {100 * worst[0]:+.1f} ± {100 * worst[1]:.1f} pts, significant fall={sig}")
    print(f"greedy: {g['accuracy']:.3f} at {g['tokens']:.0f} tokens")
    big = {r["strategy"]: r for r in rows if r.get("budget_tokens") == max(budgets)}
    print(f"\nlargest budget {max(budgets)} tokens: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in big.items()))
    if "best_of_n" in big:
        for k in ("beam", "mcts", "revise"):
            if k in big and "correct" in big[k]:
                d, se = paired_change(big["best_of_n"], big[k])
                print(f"  {k} (PRM) - best_of_n (ORM): {100 * d:+.1f} ± {100 * se:.1f} points (paired), "
                      f"at {big[k]['generated_tokens']:.0f} vs {big['best_of_n']['generated_tokens']:.0f} tokens")
    print(f"expert iteration (MCTS+PRM, verified): greedy {summary['init']['accuracy']:.3f} -> {summary['final']['accuracy']:.3f} "
          f"({100 * (summary['final']['accuracy'] - summary['init']['accuracy']):+.1f} points, n={summary['final']['n']})")
    print(f"throughput: plain sampling {plain['sample_tokens_per_s']:.0f} tok/s ({nb} x {len(s.problems)} sequences)")
    if bon:
        print(f"best-of-{nb}: {bon['tokens_per_s']:.0f} tok/s (sampling), {bon['generated_tokens'] * len(s.problems) / bon['time_s']:.0f} tok/s incl. ORM")
    if mcts:
        print(f"MCTS: {mcts['expansions']} expansions in {mcts['time_s']:.1f} s = {mcts['expansions'] / mcts['time_s']:.1f} expansions/s "
              f"({mcts['waves']} batched waves), sampling {mcts['tokens_per_s']:.0f} tok/s")
    print(f"wall: recipe {t_recipe:.0f} s, scaling sweep {t_scaling:.0f} s")


def expert_iteration_only(args, run_dir: Path, cmd: str) -> None:
    """SFT checkpoint of ``run_dir`` -> expert iteration only (its PRM from ``run_dir``), into
    ``run_dir/ei-<time>``; prints greedy accuracy before/after."""
    import copy

    import yaml

    from warmstart.engine.config import apply_override, parse_value, validate_recipe
    from warmstart.engine.run import run_recipe

    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw = copy.deepcopy(raw)
    ei = next(p for p in raw["phases"] if p["kind"] == "expert_iteration")
    sft = next(p for p in raw["phases"] if p["kind"] == "sft")
    raw["policy"]["path"] = str(sft_checkpoint(run_dir).resolve())
    sft["steps"] = 0
    raw["phases"] = [sft, ei]
    ei.setdefault("search", {})["reward_model"] = str((run_dir / "reward_models" / ei["search"].get("scorer", "prm")).resolve())
    for kv in args.sets:
        k, v = kv.split("=", 1)
        apply_override(raw, k, parse_value(v))
    out = run_dir / f"ei-{time.strftime('%H%M%S')}"
    t0 = time.time()
    s = run_recipe(validate_recipe(raw), raw, run_dir=out, quiet=True)
    print(f"# {cmd}")
    print(f"expert iteration ({json.dumps(ei)}):")
    print(f"greedy {s['init']['accuracy']:.3f} -> {s['final']['accuracy']:.3f} "
          f"({100 * (s['final']['accuracy'] - s['init']['accuracy']):+.1f} points, n={s['final']['n']}), {time.time() - t0:.0f} s, run {out}")


if __name__ == "__main__":
    main()
