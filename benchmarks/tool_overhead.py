"""Tool-call overhead: rollout tokens/s of the chart task with tools over HTTP vs in-process vs no
tools, and the latency of one tool call each way.

The three rollouts use the same policy, the same charts and the same seeds; "no tools" is the
text-only setting (one turn: the policy answers at once, no call is made). They run interleaved,
``--repeats`` times each, and the table gives the median. Tokens/s counts the tokens the policy
sampled per second of rollout wall time, tool calls included.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tool_overhead.py --policy RUN/final [--charts 64] [--repeats 3]

Without ``--policy`` a freshly initialised tiny policy is used (it calls no tool successfully, so
only the per-call latency rows mean anything).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default=None, help="a vtoolrl run's final/ (or checkpoint) directory")
    ap.add_argument("--charts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=300, help="tool calls for the latency rows")
    ap.add_argument("--latency-only", action="store_true", help="only the per-call latency rows (no policy, no rollouts)")
    a = ap.parse_args()
    torch.set_num_threads(1)

    from warmstart.policies import load_policy
    from warmstart.policies.lm import LMPolicyConfig, make_lm_policy
    from warmstart.rollout import Sampling, rollout
    from warmstart.tasks.chart import ChartTask, ChartTaskConfig

    policy = load_policy(a.policy) if a.policy else make_lm_policy(LMPolicyConfig(max_position=768))
    tasks = {
        "http": ChartTask(ChartTaskConfig(n_test=a.charts, eval_max_turns=3, tools={"serve": "http"}), "test"),
        "in_process": ChartTask(ChartTaskConfig(n_test=a.charts, eval_max_turns=3, tools={"serve": "in_process"}), "test"),
        "no_tools": ChartTask(ChartTaskConfig(n_test=a.charts, eval_max_turns=1, tools={"serve": "in_process"}), "test"),
    }
    rows: dict[str, list[tuple[float, int, float]]] = {k: [] for k in tasks}
    try:
        for r in range(0 if a.latency_only else a.repeats):
            for name, task in tasks.items():
                probs = task.eval_problems(a.charts)
                t0 = time.perf_counter()
                eps, st = rollout(policy, probs, task=task, sampling=Sampling(task.max_new_tokens, 0.0))
                dt = time.perf_counter() - t0
                calls = sum(len(e.info.get("tool_calls", [])) for e in eps) / len(eps)
                rows[name].append((st["sampled_tokens"] / dt, st["sampled_tokens"], calls))
        # latency of one call each way, interleaved: a text answer (read_value) and a picture (zoom on a
        # rendered 96 x 64 chart: the crop, scaled up; over HTTP it travels as PNG)
        state = tasks["http"].problems[0].info["chart"]
        picture = {**state, "kind": "bar", "ymax": 99, "image": [96, 64]}
        calls = {"read_value": ("read_value", {"label": "A"}, state), "zoom (picture)": ("zoom", {"first": "B", "last": "D"}, picture)}
        lat: dict[tuple[str, str], list[float]] = {(ex, c): [] for c in calls for ex in ("http", "in_process")}
        for r in range(a.repeats):
            for ex_name, call in lat:
                ex = tasks[ex_name].tools
                name, args, st = calls[call]
                assert ex.call(name, args, st).ok
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    ex.call(name, args, st)
                lat[(ex_name, call)].append((time.perf_counter() - t0) / a.calls * 1e3)
    finally:
        for t in tasks.values():
            t.close()
    print(f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} {sys.executable} {' '.join(sys.argv)}")
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    if not a.latency_only:
        print(f"| setting | rollout tokens/s (median of {a.repeats}) | vs no tools | sampled tokens | tool calls / episode |")
        print("| --- | --- | --- | --- | --- |")
        base = statistics.median(x[0] for x in rows["no_tools"])
        for name, xs in rows.items():
            med = statistics.median(x[0] for x in xs)
            print(f"| {name} | {med:.0f} | {med / base:.2f} | {xs[0][1]} | {xs[0][2]:.2f} |")
        print()
    print("| executor | call | ms per call (median) |")
    print("| --- | --- | --- |")
    for (name, call), xs in lat.items():
        print(f"| {name} | {call} | {statistics.median(xs):.3f} |")


if __name__ == "__main__":
    main()
