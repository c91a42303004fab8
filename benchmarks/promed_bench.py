"""ProMed: SIG RL vs outcome-only RL vs answering at once vs no MCTS init, with the Bayes ceilings.

Per seed, three SFT warm starts (the ``sft`` phases of the recipes, same steps and demo count):
MCTS dialogues (``recipes/promed.yaml``, shared by SIG RL and outcome-only RL, whose recipes have
the same SFT block), random-question dialogues (``promed-no-mcts``) and at-once answers
(``promed-answer-at-once``); then each method's GRPO phase from its warm start, with the same
budget (steps x cases x G). Every policy is evaluated greedily on the same held-out cases. Prints
accuracy, questions per dialogue, share of useless questions, SIG per question, information
coverage and the share of dialogues ending in a well-formed answer (mean ± sd over seeds), the
paired differences the issue's targets ask about, and the Bayes-optimal ceilings on those cases.

    OMP_NUM_THREADS=1 python benchmarks/promed_bench.py --seeds 0 1 2 [--set key=value ...]
    python benchmarks/promed_bench.py --report runs/bench-promed-...   # the table of a finished (or partial) run
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

INITS = [  # (label, recipe whose sft phase builds it)
    ("SFT on MCTS dialogues", "promed.yaml"),
    ("SFT on random dialogues", "promed-no-mcts.yaml"),
    ("SFT on at-once answers", "promed-answer-at-once.yaml"),
]
METHODS = [  # (label, recipe, init label, extra overrides)
    ("SIG RL (ProMed)", "promed.yaml", "SFT on MCTS dialogues", []),
    ("outcome-only RL", "promed-outcome-only.yaml", "SFT on MCTS dialogues", []),
    ("SIG RL, no MCTS init", "promed-no-mcts.yaml", "SFT on random dialogues", []),
    ("answer at once (outcome RL)", "promed-answer-at-once.yaml", "SFT on at-once answers", []),
    # ours, not the paper's: question tokens baselined against questions, answers against answers
    ("SIG RL, per-kind baseline", "promed.yaml", "SFT on MCTS dialogues", ["phases.grpo.baseline=per_kind"]),
]
KEYS = ["accuracy", "questions", "useless_share", "sig_per_question", "coverage", "answered"]
CEILINGS = ["bayes_at_once", "bayes_greedy", "bayes_oracle"]


def _run(raw: dict, run_dir: Path) -> dict:
    from warmstart.engine.config import validate_recipe
    from warmstart.engine.run import run_recipe

    recipe = validate_recipe(raw, source=str(run_dir))
    return run_recipe(recipe, raw, run_dir=run_dir, quiet=True)


def _mean_sd(v: list[float]) -> str:
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.3f} ± {sd:.3f}"


def report(rows: list[dict], cmd: str) -> None:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    seeds = sorted({r["seed"] for r in rows})
    n = rows[0]["n"]
    print(f"\n# {cmd}")
    print(f"seeds {seeds}; {n} held-out cases, greedy dialogues; mean ± sd over seeds")
    hdr = ["policy", "accuracy", "questions", "useless share", "SIG / question", "coverage", "answered", "wall s"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for label in [i for i, _ in INITS] + [m[0] for m in METHODS]:
        if label not in by:
            continue
        cells = [f"{label} (n={len(by[label])})"] + [_mean_sd([r[k] for r in by[label]]) for k in KEYS]
        cells.append(f"{statistics.mean(r['wall_s'] for r in by[label]):.0f}")
        print("| " + " | ".join(cells) + " |")
    first = rows[0]
    print("| Bayes ceilings on the same cases: " + ", ".join(f"{k} {first[k]:.3f}" for k in CEILINGS)
          + f" (greedy asks {first['bayes_greedy_questions']:.2f}) |")

    def paired(a: str, b: str, key: str) -> str:
        da = {r["seed"]: r[key] for r in by.get(a, [])}
        db = {r["seed"]: r[key] for r in by.get(b, [])}
        common = sorted(set(da) & set(db))
        if not common:
            return "n/a"
        d = [da[s] - db[s] for s in common]
        return f"{statistics.mean(d):+.3f} (per seed {', '.join(f'{x:+.3f}' for x in d)})"

    sig, out, nom, once, kind = (m[0] for m in METHODS)
    print(f"\nSIG RL - outcome-only RL: accuracy {paired(sig, out, 'accuracy')}; useless share {paired(sig, out, 'useless_share')}")
    print(f"SIG RL - answer at once: accuracy {paired(sig, once, 'accuracy')}; outcome-only RL - answer at once: {paired(out, once, 'accuracy')}")
    if sig in by and once in by:
        a = statistics.mean(r["accuracy"] for r in by[sig])
        b = statistics.mean(r["accuracy"] for r in by[once])
        print(f"relative margin of SIG RL over answering at once: {100 * (a - b) / max(b, 1e-9):+.1f}% (the paper: +54%)")
    print(f"MCTS init - no MCTS init (both SIG RL): accuracy {paired(sig, nom, 'accuracy')}; "
          f"useless share {paired(sig, nom, 'useless_share')}")
    print(f"SIG RL per-kind baseline - outcome-only RL: accuracy {paired(kind, out, 'accuracy')}; "
          f"useless share {paired(kind, out, 'useless_share')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override applied to every recipe, repeatable")
    ap.add_argument("--out", default=str(ROOT / "runs" / f"bench-promed-{time.strftime('%m%d-%H%M%S')}"))
    ap.add_argument("--report", default=None, nargs="+", help="print the table of earlier runs' results.jsonl and exit")
    ap.add_argument("--inits-from", default=None,
                    help="an earlier --out whose SFT warm starts the RL runs start from (the seed's own, else seed 0's); "
                         "no SFT is run")
    ap.add_argument("--methods", nargs="+", default=None, help="run only these methods (labels as in the table)")
    args = ap.parse_args()
    cmd = "OMP_NUM_THREADS=1 python benchmarks/promed_bench.py " + " ".join(sys.argv[1:])
    if args.report:
        rows = [json.loads(line) for d in args.report for line in (Path(d) / "results.jsonl").read_text().splitlines() if line]
        report(rows, cmd)
        return

    from warmstart.engine.config import load_recipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(seed: int, label: str, summary: dict, wall: float) -> None:
        row = {"seed": seed, "method": label, "wall_s": wall, **summary["final"]}
        rows.append(row)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        print(json.dumps({k: row[k] for k in ["seed", "method", *KEYS, "wall_s"]}, default=float), flush=True)

    for seed in args.seeds:
        bases: dict[str, str] = {}
        if args.inits_from:
            for label, recipe in INITS:
                own = Path(args.inits_from) / f"seed{seed}" / f"sft-{Path(recipe).stem}" / "final"
                bases[label] = str(own if own.exists() else Path(args.inits_from) / "seed0" / f"sft-{Path(recipe).stem}" / "final")
        for label, recipe in ([] if args.inits_from else INITS):
            _, raw = load_recipe(ROOT / "recipes" / recipe, [f"seed={seed}", *args.sets])
            raw["phases"] = [p for p in raw["phases"] if p["kind"] == "promed_sft"]
            t0 = time.time()
            run_dir = out / f"seed{seed}" / f"sft-{Path(recipe).stem}"
            s = _run(raw, run_dir)
            record(seed, label, s, time.time() - t0)
            bases[label] = str(run_dir / "final")
        for label, recipe, init, extra in METHODS:
            if args.methods and label not in args.methods:
                continue
            _, raw = load_recipe(ROOT / "recipes" / recipe, [f"seed={seed}", *args.sets, *extra])
            raw = copy.deepcopy(raw)
            raw["policy"] = {"kind": "lm", "path": bases[init], "threads": raw["policy"].get("threads")}
            raw["phases"] = [p for p in raw["phases"] if p["kind"] != "promed_sft"]
            t0 = time.time()
            s = _run(raw, out / f"seed{seed}" / (Path(recipe).stem + ("-" + "-".join(x.split("=")[1] for x in extra) if extra else "")))
            record(seed, label, s, time.time() - t0)
    report(rows, cmd)


if __name__ == "__main__":
    main()
