"""SFT efficiency: tokens/s of warmstart's SFT phase on the quickstart model, as a share of the
machine's measured fp32 matmul peak.

* SFT: the quickstart's tiny Llama (hidden 128, 4 layers, 4 heads, char tokenizer) trained by
  warmstart's own SFT phase (built from a recipe dict, as ``warmstart run`` does) on chain-arithmetic
  demonstrations (75% answer-only, 25% worked), batch 128. Tokens = real (non-pad) prompt +
  completion tokens per step; time = wall time of ``phase.step`` (collate, forward, backward, clip,
  AdamW).
* Model FLOPs per trained token: ``6 * N + 6 * L * H * T`` where N = parameters that take part in a
  matmul (attention and MLP projections of every layer, plus the tied output embedding used as the LM
  head; the embedding lookup and RMSNorm weights do no matmul), L = layers, H = width, T = mean
  sequence length of the step. The attention term: per layer and token, causal attention scores and
  the weighted sum each cost 2 * H * (T/2) FLOPs on average in the forward pass, 2 * H * T together,
  times 3 for forward + backward.
* Peak: ``torch.mm`` of square fp32 matrices (n = 512, 1024, 1536, 2048) with the same thread count
  as SFT; each size is warmed up, then timed ``--peak-reps`` times; the peak is the best GFLOP/s
  (2 n^3 FLOPs per product) over all sizes and rounds. Peak rounds are interleaved with the SFT
  steps, so that background load on a shared machine hits both alike.

``--compile`` adds a second SFT run with ``policy.compile: true`` (same initial weights and batches),
its steps interleaved with the eager run's; its first steps (the compilation) are reported apart.

    .venv/bin/python benchmarks/sft_efficiency.py [--steps 10] [--warmup 3] [--compile]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

import torch

SIZES = (512, 1024, 1536, 2048)


def mm_gflops(n: int, reps: int) -> float:
    """Best GFLOP/s of ``reps`` timed n x n fp32 products (after one warm-up product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_params(model) -> int:
    """Parameters that take part in a matmul: every 2-D weight except the input embedding, plus the LM
    head (the tied embedding, used once as the output projection)."""
    emb = model.get_input_embeddings().weight
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and p is not emb)
    return n + model.get_output_embeddings().weight.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed SFT steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed SFT warm-up steps")
    ap.add_argument("--batch-size", type=int, default=128, help="demonstrations per SFT step")
    ap.add_argument("--peak-reps", type=int, default=3, help="timed products per matrix size per round")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="also run SFT with policy.compile: true, interleaved")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd = env + ".venv/bin/python " + " ".join(shlex.quote(x) for x in sys.argv)
    print(f"command: {cmd}")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {threads}, nproc {os.cpu_count()}")

    from warmstart.engine.config import validate_recipe
    from warmstart.engine.logging import quiet_hf
    from warmstart.engine.run import build_context
    from warmstart.registry import PHASES

    quiet_hf()
    total = a.warmup + a.steps
    raw = {
        "name": "sft_efficiency",
        "seed": 0,
        "task": {"kind": "chain_arithmetic", "n_terms": 7, "n_demos": 4000, "worked_fraction": 0.25, "n_test": 100},
        "policy": {"kind": "lm", "hidden_size": 128, "num_layers": 4, "num_heads": 4, "max_position": 128},
        "phases": [{"kind": "sft", "steps": total, "batch_size": a.batch_size, "lr": 2e-3, "schedule": "cosine", "warmup": 2}],
    }
    recipe = validate_recipe(raw, source="sft_efficiency.py")
    ctx = build_context(recipe)
    phase = PHASES.get("sft").factory(recipe.phases[0], ctx)
    phase.on_start(0)
    model = ctx.policy.model
    arms = {"eager": phase}
    if a.compile:  # the same run with the compiled training forward, from the same weights
        raw_c = {**raw, "policy": {**raw["policy"], "compile": True}}
        recipe_c = validate_recipe(raw_c, source="sft_efficiency.py")
        ctx_c = build_context(recipe_c)
        ctx_c.policy.model.load_state_dict(model.state_dict())
        arms["compiled"] = PHASES.get("sft").factory(recipe_c.phases[0], ctx_c)
        arms["compiled"].on_start(0)
    cfg = model.config
    N, L, H = matmul_params(model), cfg.num_hidden_layers, cfg.hidden_size

    # warm up both the SFT step and the matmul kernels
    for n in SIZES:
        mm_gflops(n, 1)
    rec = {name: {"time": [], "cpu": [], "tokens": [], "first": []} for name in arms}
    peaks, seq_lens = [], []
    for k in range(total):
        for name, ph in arms.items():
            t0, c0 = time.perf_counter(), time.process_time()
            m = ph.step(k, k)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            r = rec[name]
            if k >= a.warmup:
                r["time"].append(dt)
                r["cpu"].append(dc)
                r["tokens"].append(m["tokens"])
            else:
                r["first"].append(dt)
        if k >= a.warmup:
            seq_lens.append(m["tokens"] / a.batch_size)
            peaks.append(max(mm_gflops(n, a.peak_reps) for n in SIZES))
    times, tokens = rec["eager"]["time"], rec["eager"]["tokens"]
    per_size = {n: mm_gflops(n, a.peak_reps) for n in SIZES}  # one last round, for the record
    peak = max(max(peaks), *per_size.values())
    ncpu = os.cpu_count() or threads
    peak_all = None
    if threads != ncpu:  # the machine's peak uses every core, whatever SFT ran with
        torch.set_num_threads(ncpu)
        peak_all = max(mm_gflops(n, a.peak_reps) for _ in range(3) for n in SIZES)
        torch.set_num_threads(threads)

    tok_s = sum(tokens) / sum(times)
    T = statistics.mean(seq_lens)
    flop_tok = 6 * N + 6 * L * H * T
    achieved = tok_s * flop_tok / 1e9
    print()
    print(f"model: tiny Llama, {sum(p.numel() for p in model.parameters()):,} parameters, N (matmul params) = {N:,}, "
          f"L = {L}, H = {H}; SFT batch {a.batch_size}, mean sequence {T:.1f} tokens; {a.steps} timed steps after {a.warmup}")
    print(f"FLOPs per trained token = 6 N + 6 L H T = 6*{N:,} + 6*{L}*{H}*{T:.1f} = {flop_tok / 1e6:.2f} MFLOP")
    print(f"peak: best of torch.mm fp32 n x n, n in {list(SIZES)}, {threads} threads, warmed up, "
          f"{a.peak_reps} reps x {a.steps + 1} rounds interleaved with the SFT steps")
    print("      last round per size: " + ", ".join(f"n={n}: {g:.1f}" for n, g in per_size.items()) + " GFLOP/s")
    print()
    print("| metric | value |")
    print("| --- | --- |")
    print(f"| SFT tokens/s (real tokens, batch {a.batch_size}) | {tok_s:,.0f} |")
    print(f"| SFT step time, median | {statistics.median(times) * 1e3:.0f} ms |")
    print(f"| training FLOPs per token | {flop_tok / 1e6:.2f} MFLOP |")
    print(f"| SFT achieved | {achieved:.1f} GFLOP/s |")
    print(f"| fp32 matmul peak ({threads} threads, measured, best) | {peak:.1f} GFLOP/s |")
    print(f"| fp32 matmul peak, median of rounds | {statistics.median(peaks):.1f} GFLOP/s |")
    print(f"| SFT / peak ({threads} threads) | {achieved / peak:.1%} |")
    print(f"| SFT / median-of-rounds matmul rate (same load) | {achieved / statistics.median(peaks):.1%} |")
    if a.compile:
        rc = rec["compiled"]
        tok_c = sum(rc["tokens"]) / sum(rc["time"])
        ach_c = tok_c * flop_tok / 1e9
        print(f"| compiled: SFT tokens/s | {tok_c:,.0f} |")
        print(f"| compiled: SFT step time, median | {statistics.median(rc['time']) * 1e3:.0f} ms |")
        print(f"| compiled: SFT achieved | {ach_c:.1f} GFLOP/s |")
        print(f"| compiled: SFT / peak ({threads} threads) | {ach_c / peak:.1%} |")
        print(f"| compiled: SFT / median-of-rounds matmul rate | {ach_c / statistics.median(peaks):.1%} |")
        print(f"| compiled / eager, median step CPU time | {statistics.median(rec['eager']['cpu']) / statistics.median(rc['cpu']):.2f}x |")
        print(f"| compiled / eager, median step wall time | {statistics.median(times) / statistics.median(rc['time']):.2f}x |")
        print(f"| compiled: warm-up steps (compilation), wall | {', '.join(f'{t:.1f} s' for t in rc['first'])} |")
        print(f"| eager: warm-up steps, wall | {', '.join(f'{t:.1f} s' for t in rec['eager']['first'])} |")
    if peak_all is not None:
        print(f"| fp32 matmul peak, all {ncpu} cores (3 rounds after SFT) | {peak_all:.1f} GFLOP/s |")
        print(f"| SFT / all-core peak | {achieved / peak_all:.1%} |")
    print()
    print(f"command: {cmd}")


if __name__ == "__main__":
    main()
