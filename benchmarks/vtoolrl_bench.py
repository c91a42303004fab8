"""V-ToolRL's claim on the text-chart task: tool RL > text-only RL > SFT only, and how tool use
changes under RL -- per seed, from one SFT cold start per seed.

One SFT cold start (``recipes/vtoolrl-sft.yaml``: SFT on scripted tool trajectories executed
against the tool server, seed ``--sft-seed``), shared by every RL run, as the paper's RL variants
share one SFT model; then for each seed ``recipes/vtoolrl.yaml`` (GRPO with tool calls over HTTP)
and ``recipes/vtoolrl-text-only.yaml`` (GRPO, one turn, no tools), both from that SFT's final
policy (``policy.path``, SFT steps 0), same steps, prompts and group size (the same sampling budget
in episodes). Every evaluation uses the same held-out charts (``eval.n`` of them).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vtoolrl_bench.py --out runs/vtoolrl-bench [--seeds 0 1 2]
        [--set phases.sft.steps=300 ...]   (applied to every recipe; phase names are sft, toolrl, textrl)

Runs already finished under ``--out`` are reused (a crashed benchmark continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(recipe: str, run_dir: Path, sets: list[str]) -> dict:
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    if (run_dir / "summary.json").exists():
        return json.loads((run_dir / "summary.json").read_text())
    r, raw = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", sets)
    return run_recipe(r, raw, run_dir=run_dir, quiet=True, overwrite=True)


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/vtoolrl-bench"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the RL runs")
    ap.add_argument("--sft-seed", type=int, default=0)
    ap.add_argument("--sft-dir", type=Path, default=None, help="a finished vtoolrl-sft run to start from (default: run one)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for every recipe")
    ap.add_argument("--rl-set", dest="rl_sets", action="append", default=[], help="override for the two RL recipes only")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    sft_dir = a.sft_dir or a.out / f"sft-s{a.sft_seed}"
    sft = run("vtoolrl-sft", sft_dir, [f"seed={a.sft_seed}"] + a.sets)
    for seed in a.seeds:
        base = [f"seed={seed}"] + a.sets
        start = [f"policy.path={sft_dir / 'final'}", "phases.sft.steps=0"] + base + a.rl_sets
        tool = run("vtoolrl", a.out / f"toolrl-s{seed}", start)
        text = run("vtoolrl-text-only", a.out / f"textrl-s{seed}", start)
        # "SFT only" is the SFT policy as the tool-RL run evaluates it before its first step: the same held-out
        # charts as every other row (the SFT run's own evaluation may use another task.data_seed)
        rows.append({"seed": seed, "sft": tool["init"], "sft_no_tools": text["init"], "toolrl": tool["final"],
                     "textrl": text["final"], "time_s": {"sft": sft["time_s"], "toolrl": tool["time_s"], "textrl": text["time_s"]},
                     "toolrl_start": tool["init"]})
        (a.out / "bench.json").write_text(json.dumps(rows, indent=2, default=float))
    print(f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} {sys.executable} {' '.join(sys.argv)}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"held-out charts per evaluation: {rows[0]['sft']['n']}; RL seeds: {a.seeds}; one SFT ({sft_dir})")
    kinds_seen = [q for q in ("value", "diff", "max", "argmax", "sum") if any(f"accuracy/{q}" in r["sft"] for r in rows)]
    print("| policy | accuracy (mean ± sd over seeds) | per seed | " + " | ".join(kinds_seen) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in kinds_seen) + " |")
    for key, label in (("sft_no_tools", "SFT only, no tools (1 turn)"), ("sft", "SFT only, with tools (3 rounds)"),
                       ("textrl", "text-only RL (1 turn)"), ("toolrl", "tool RL (V-ToolRL, 3 rounds)")):
        acc = [r[key]["accuracy"] for r in rows]
        per = " / ".join(f"{x:.3f}" for x in acc)
        kinds = " | ".join(_ms([r[key].get(f"accuracy/{q}", float("nan")) for r in rows]) for q in kinds_seen)
        print(f"| {label} | {_ms(acc)} | {per} | {kinds} |")
    print()
    print("| tool use | SFT (with tools) | after tool RL |")
    print("| --- | --- | --- |")
    for k in ("tool_calls_per_episode", "tool_success_rate", "tool_errors", "answered", "turns_per_episode",
              "calls/read_value", "calls/draw_line", "calls/zoom", "calls/point"):
        print(f"| {k} | {_ms([r['sft'].get(k, 0.0) for r in rows])} | {_ms([r['toolrl'].get(k, 0.0) for r in rows])} |")
    print()
    print("| seconds per run (mean) | sft | toolrl | textrl |")
    print("| --- | --- | --- | --- |")
    print("| | " + " | ".join(f"{statistics.mean(r['time_s'][k] for r in rows):.0f}" for k in ("sft", "toolrl", "textrl")) + " |")


if __name__ == "__main__":
    main()
