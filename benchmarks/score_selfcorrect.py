"""SCoRe vs. STaR, Pair-SFT and naive multi-turn RL: do they teach a tiny model to correct itself?

Per seed: one SFT warm start (the ``sft`` phase shared by ``recipes/score*.yaml``: same task, policy,
SFT block and seed, so every recipe's own SFT would produce this very model), then each method's
learning phases from that checkpoint, with the same sampling budget (steps x problems x samples).
Every policy is evaluated greedily on the same held-out problems in two attempts. Prints a table of
Acc@t1, Acc@t2, Δ = Acc@t2 - Acc@t1, Δ^{i→c}, Δ^{c→i} and the share of changed answers (points,
mean ± sd over seeds) and the command that made it. Before that, the SFT base's sampled (T = 1)
attempts split into worked (step by step, with a ';') and answered at once, with the accuracy of
each: the test is only fair if the worked strategy is reliably right and answering at once is not.

``--setting budget`` runs ``recipes/score-budget*.yaml`` instead: each attempt has a token budget
that fits half the chain, so attempt 1 cannot adopt the revision's strategy and a revision gains
only by continuing attempt 1's steps; ``--split`` measures each seed's own SFT base at T = 1 (how
often attempt 2 rewrites attempt 1, and how often it is then right vs. when it copies).

    OMP_NUM_THREADS=1 python benchmarks/score_selfcorrect.py --seeds 0 1 2 [--set key=value ...]
    OMP_NUM_THREADS=1 python benchmarks/score_selfcorrect.py --setting budget --seeds 0 1 2 --split
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {  # --setting: the recipes' name prefix
    "chain": "score",          # no budget: attempt 1 may work the whole chain out (issue 5's table)
    "budget": "score-budget",  # per-attempt token budget: attempt 1 works half the chain, a revision the rest
}
METHODS = [  # (label, recipe suffix)
    ("STaR", "-star"),
    ("Pair-SFT", "-pair-sft"),
    ("naive multi-turn RL", "-naive-rl"),
    ("SCoRe (Stage I + II)", ""),
]
KEYS = ["acc@t1", "acc@t2", "delta", "delta_i2c", "delta_c2i", "changed", "revised", "worked@t1", "worked@t2"]


def recipe_path(setting: str, suffix: str = "") -> Path:
    return ROOT / "recipes" / f"{SETTINGS[setting]}{suffix}.yaml"


def _run(raw: dict, run_dir: Path) -> dict:
    from warmstart.engine.config import validate_recipe
    from warmstart.engine.run import run_recipe

    recipe = validate_recipe(raw, source=str(run_dir))
    return run_recipe(recipe, raw, run_dir=run_dir, quiet=True)


def base_split(base: str, sets: list[str], samples: int = 2, seed: int = 0, setting: str = "chain") -> dict:
    """Sample the base at T = 1 on the held-out problems (two attempts, ``samples`` per problem) and
    split each attempt by strategy: share worked, accuracy of worked vs. answered-at-once attempts;
    and attempt 2 by whether it rewrote attempt 1 (revised) or copied it, with the accuracy of each."""
    import torch

    from warmstart.engine.config import load_recipe
    from warmstart.policies import load_policy
    from warmstart.registry import TASKS
    from warmstart.rollout import Sampling, rollout

    rec, _ = load_recipe(recipe_path(setting), sets)
    task = TASKS.get(rec.task.kind).factory(rec.task, split="test", seed=0)
    policy = load_policy(base)
    problems = task.eval_problems(rec.task.n_test)
    eps, _ = rollout(policy, problems, task=task, samples=samples, sampling=Sampling(task.max_new_tokens, 1.0, batch_size=256),
                     generator=torch.Generator().manual_seed(seed))
    out: dict = {"samples": len(eps)}
    for k in range(2):
        texts = [(e.turn_texts[k] if k < len(e.turn_texts) else "", e.info["answer"]) for e in eps]
        worked = [task.is_correct(t, a) for t, a in texts if task.step_separator in t]
        once = [task.is_correct(t, a) for t, a in texts if task.step_separator not in t]
        out[f"t{k + 1}_worked_share"] = len(worked) / len(eps)
        out[f"t{k + 1}_worked_acc"] = sum(worked) / max(len(worked), 1)
        out[f"t{k + 1}_once_acc"] = sum(once) / max(len(once), 1)
    # how often the base revises by working it out after answering at once
    after_once = [e for e in eps if task.step_separator not in e.turn_texts[0]]
    out["t2_worked_after_once"] = sum(task.step_separator in e.turn_texts[-1] for e in after_once) / max(len(after_once), 1)
    rev = [task.is_correct(e.turn_texts[-1], e.info["answer"]) for e in eps if e.turn_texts[-1].strip() != e.turn_texts[0].strip()]
    copy_ = [task.is_correct(e.turn_texts[-1], e.info["answer"]) for e in eps if e.turn_texts[-1].strip() == e.turn_texts[0].strip()]
    out.update({"t2_revised_share": len(rev) / len(eps), "t2_revised_acc": sum(rev) / max(len(rev), 1),
                "t2_copied_acc": sum(copy_) / max(len(copy_), 1)})
    return out


HEADERS = {"acc@t1": "Acc@t1", "acc@t2": "Acc@t2", "delta": "Δ(t1,t2)", "delta_i2c": "Δ^{i→c}", "delta_c2i": "Δ^{c→i}",
           "changed": "changed", "revised": "revised", "worked@t1": "worked@t1", "worked@t2": "worked@t2"}


def print_table(rows: dict[str, list[dict]], times: dict[str, list[float]], seeds: list[int], cmd: str, wall: float,
                splits: list[dict]) -> None:
    """The markdown table (points, mean ± sd over seeds) and each seed's base split."""
    n = rows["SFT base"][0].get("n", "eval.n")
    print(f"\n# {cmd}")
    print(f"seeds {seeds}; {n} held-out problems, greedy, 2 attempts; points (mean ± sd over seeds); total wall {wall:.0f} s")
    hdr = ["method"] + [HEADERS[k] for k in KEYS] + ["wall s"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for label in [m for m in ["SFT base"] + [m for m, _ in METHODS] if m in rows]:
        cells = [label]
        for k in KEYS:
            v = [100 * r[k] for r in rows[label] if k in r]
            if not v:
                cells.append("–")
                continue
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            sign = "+" if k in ("delta",) else ""
            cells.append(f"{statistics.mean(v):{sign}.1f} ± {sd:.1f}")
        cells.append(f"{statistics.mean(times[label]):.0f}")
        print("| " + " | ".join(cells) + " |")
    for seed, sp in zip(seeds, splits):
        print(f"seed {seed} SFT base at T = 1 ({sp['samples']} samples): attempt 2 rewrote attempt 1 "
              f"{100 * sp['t2_revised_share']:.1f}% of the time, then right {100 * sp['t2_revised_acc']:.1f}% vs "
              f"{100 * sp['t2_copied_acc']:.1f}% when it copied; attempt 1 right {100 * sp['t1_worked_acc']:.1f}% (worked)")


def table_from_logs(paths: list[str], cmd: str) -> None:
    """Rebuild the table from the JSON lines of runs made one seed per process (e.g. in parallel)."""
    rows: dict[str, list[dict]] = {}
    times: dict[str, list[float]] = {}
    splits: dict[int, dict] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if "base_split" in rec and "seed" in rec:
                splits[rec["seed"]] = rec["base_split"]
            elif "method" in rec:
                rows.setdefault(rec["method"], []).append(rec)
                times.setdefault(rec["method"], []).append(rec.get("wall_s", float("nan")))
    seeds = sorted({r["seed"] for r in rows["SFT base"]})
    print_table(rows, times, seeds, cmd, float("nan"), [splits[s] for s in seeds if s in splits])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="chain",
                    help="'chain': recipes/score*.yaml (no budget); 'budget': recipes/score-budget*.yaml (per-attempt token budget)")
    ap.add_argument("--split", action="store_true", help="also measure each seed's SFT base at T = 1 (see base_split)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override applied to every recipe, repeatable")
    ap.add_argument("--shared-sft", action="store_true",
                    help="train the SFT warm start once (first seed) and start every seed's methods from it (saves CPU)")
    ap.add_argument("--base", default=None,
                    help="an existing SFT warm start (a run's final/ of recipes/score.yaml's sft phase) to start every method from")
    ap.add_argument("--split-only", action="store_true", help="only measure the --base's worked vs. at-once accuracy")
    ap.add_argument("--out", default=str(ROOT / "runs" / f"bench-score-{time.strftime('%m%d-%H%M%S')}"))
    ap.add_argument("--from-logs", nargs="+", default=None,
                    help="print the table from the stdout logs of earlier runs (one seed per process) and exit")
    args = ap.parse_args()
    cmd = "OMP_NUM_THREADS=1 python benchmarks/score_selfcorrect.py " + " ".join(sys.argv[1:])
    if args.from_logs:
        table_from_logs(args.from_logs, cmd)
        return

    from warmstart.engine.config import load_recipe

    out = Path(args.out)
    split = None
    splits: list[dict] = []
    if args.base:
        split = base_split(args.base, args.sets, setting=args.setting)
        print(json.dumps({"base_split": split}), flush=True)
        if args.split_only:
            return
    rows: dict[str, list[dict]] = {}
    times: dict[str, list[float]] = {}
    t_all = time.time()
    for seed in args.seeds:
        # 1. the SFT warm start (one per seed, or the first seed's for all with --shared-sft)
        if args.base:
            rows.setdefault("SFT base", [])
            times.setdefault("SFT base", [])
            base = args.base
            if not rows["SFT base"]:
                from warmstart.engine.eval import evaluate_checkpoint
                from warmstart.engine.config import EvalConfig
                rec, _ = load_recipe(recipe_path(args.setting), args.sets)
                t0 = time.time()
                ev, _ = evaluate_checkpoint(Path(base), str(recipe_path(args.setting)), rec.eval, [])
                rows["SFT base"].append(ev)
                times["SFT base"].append(time.time() - t0)
                print(json.dumps({"seed": seed, "method": "SFT base", **{k: ev[k] for k in KEYS}}), flush=True)
            else:
                rows["SFT base"].append(rows["SFT base"][0])
                times["SFT base"].append(times["SFT base"][0])
        elif args.shared_sft and seed != args.seeds[0]:
            rows["SFT base"].append(rows["SFT base"][0])
            times["SFT base"].append(times["SFT base"][0])
            base = str(out / f"seed{args.seeds[0]}" / "sft" / "final")
        else:
            base = None
        _, raw = load_recipe(recipe_path(args.setting), [f"seed={seed}", *args.sets])
        raw["phases"] = [p for p in raw["phases"] if p["kind"] == "sft"]
        if base is None:
            t0 = time.time()
            s = _run(raw, out / f"seed{seed}" / "sft")
            rows.setdefault("SFT base", []).append(s["final"])
            times.setdefault("SFT base", []).append(time.time() - t0)
            print(json.dumps({"seed": seed, "method": "SFT base", "n": s["final"]["n"], **{k: s["final"][k] for k in KEYS},
                              "wall_s": times["SFT base"][-1]}), flush=True)
            base = str(out / f"seed{seed}" / "sft" / "final")
            if args.split:
                sp = base_split(base, args.sets, setting=args.setting)
                splits.append(sp)
                print(json.dumps({"seed": seed, "base_split": sp}), flush=True)
        # 2. each method's learning phases from it
        for label, suffix in METHODS:
            recipe = recipe_path(args.setting, suffix)
            _, raw = load_recipe(recipe, [f"seed={seed}", *args.sets])
            raw = copy.deepcopy(raw)
            raw["policy"] = {"kind": "lm", "path": base, "threads": raw["policy"].get("threads")}
            raw["phases"] = [p for p in raw["phases"] if p["kind"] != "sft"]
            t0 = time.time()
            s = _run(raw, out / f"seed{seed}" / recipe.stem)
            rows.setdefault(label, []).append(s["final"])
            times.setdefault(label, []).append(time.time() - t0)
            print(json.dumps({"seed": seed, "method": label, "n": s["final"]["n"], **{k: s["final"][k] for k in KEYS},
                              "wall_s": times[label][-1]}), flush=True)

    print_table(rows, times, args.seeds, cmd, time.time() - t_all, splits)
    if split:
        print(f"\nSFT base at T = 1 ({split['samples']} samples): attempt 1 worked {100 * split['t1_worked_share']:.1f}% "
              f"of the time, right {100 * split['t1_worked_acc']:.1f}% when worked vs {100 * split['t1_once_acc']:.1f}% "
              f"when answered at once; attempt 2 worked {100 * split['t2_worked_share']:.1f}% (right "
              f"{100 * split['t2_worked_acc']:.1f}%), after an at-once attempt 1 {100 * split['t2_worked_after_once']:.1f}%")


if __name__ == "__main__":
    main()
