"""CPU kernel probes behind issue 19's last two numbers: small A/B measurements of the ideas that
could speed up the tiny model's GRPO and SFT steps further, one probe per idea.

Each probe times its variants interleaved (rounds of a few calls each, median of the rounds), on the
shapes of the tiny benchmark (hidden 128, 4 layers, 4 heads of 32, MLP 512; 64 decode rows; SFT
micro-batches of ~1,000-2,000 tokens), and prints a table:

* ``mm``: the step's matmul shapes written into a preallocated output vs a fresh one (what a model
  forward does), against the square-matrix peak;
* ``mkl-pack``: ``F.linear`` vs MKL's pre-packed weights (``torch.ops.mkl._mkl_linear``) at the
  decode step's shapes;
* ``decode-attention``: one decode step's attention over 45 cached keys, as the sampler does it, with
  keys stored transposed, and with the keys of each prompt read once for its 8 rows (cascade);
  eager and compiled;
* ``fused-forward``: forward + backward of the 4-layer model through HF's decoder vs a fused one
  (q/k/v and gate/up concatenated, ``F.rms_norm``, causal SDPA); eager and compiled;
* ``malloc``: the tiny GRPO step (``grpo_vs_trl.py``'s warmstart arm, eager) in child processes with
  glibc's default allocator settings and with freed memory kept (``MALLOC_*`` variables): wall time
  and page faults a step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cpu_probes.py [mm mkl-pack decode-attention fused-forward malloc]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

PROBES = ("mm", "mkl-pack", "decode-attention", "fused-forward", "malloc")
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "MALLOC_TOP_PAD_": str(64 << 20)}


def race(fns: dict, rounds: int = 15, calls: int = 10) -> dict[str, float]:
    """Median seconds per call of each function, the functions interleaved round by round."""
    for f in fns.values():
        f()
    res = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            res[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in res.items()}


def probe_mm() -> None:
    print("| product (rows x in -> out) | into a preallocated output GFLOP/s | fresh output GFLOP/s |")
    print("| --- | --- | --- |")
    for M, K, N in ((64, 128, 384), (64, 128, 1024), (1024, 128, 512), (2048, 128, 512), (2048, 512, 128)):
        x, w, out = torch.randn(M, K), torch.randn(N, K), torch.empty(M, N)
        t = race({"out": lambda: torch.mm(x, w.t(), out=out), "fresh": lambda: F.linear(x, w)})
        print(f"| {M} x {K} -> {N} | {2 * M * K * N / t['out'] / 1e9:.1f} | {2 * M * K * N / t['fresh'] / 1e9:.1f} |")
    a, b, o = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.empty(1024, 1024)
    t = race({"peak": lambda: torch.mm(a, b, out=o)}, calls=3)
    print(f"| square 1024 (the peak's kind) | {2 * 1024**3 / t['peak'] / 1e9:.1f} | |")


def probe_mkl_pack() -> None:
    print("| product (rows x in -> out) | F.linear GFLOP/s | MKL pre-packed GFLOP/s |")
    print("| --- | --- | --- |")
    for M, K, N in ((64, 128, 384), (64, 128, 128), (64, 128, 1024), (64, 512, 128), (2048, 128, 512)):
        x, w = torch.randn(M, K), torch.randn(N, K)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, M)
        torch.testing.assert_close(torch.ops.mkl._mkl_linear(x, packed, w, None, M), F.linear(x, w))
        t = race({"linear": lambda: F.linear(x, w), "packed": lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, M)})
        fl = 2 * M * K * N
        print(f"| {M} x {K} -> {N} | {fl / t['linear'] / 1e9:.1f} | {fl / t['packed'] / 1e9:.1f} |")


def probe_decode_attention() -> None:
    U, G, h, P, t, D, L = 8, 8, 4, 29, 16, 32, 64  # 8 prompts x 8 rows, 29 prompt + 16 generated keys
    B, K = U * G, P + t
    kc, vc = torch.randn(B, h, L, D), torch.randn(B, h, L, D)
    kp, vp = kc[::G, :, :P].contiguous(), vc[::G, :, :P].contiguous()  # the prompts' keys, once each
    kc[:, :, :P], vc[:, :, :P] = kp.repeat_interleave(G, 0), vp.repeat_interleave(G, 0)
    kt = kc.transpose(-1, -2).contiguous()
    ks, vs = kc[:, :, P:].contiguous(), vc[:, :, P:].contiguous()
    q, bias = torch.randn(B, h, 1, D), torch.zeros(B, 1, 1, K)

    def now(q):  # the sampler's decode attention: every row reads its copy of the prompt's keys
        return (q @ kc[:, :, :K].transpose(-1, -2) + bias).softmax(-1) @ vc[:, :, :K]

    def transposed(q):
        return (q @ kt[:, :, :, :K] + bias).softmax(-1) @ vc[:, :, :K]

    def sdpa(q):
        return F.scaled_dot_product_attention(q, kc[:, :, :K], vc[:, :, :K], attn_mask=bias, scale=1.0)

    def cascade(q):  # a prompt's 8 rows read its keys once: (G, D) x (D, P) per prompt and head
        qg = q.view(U, G, h, D).transpose(1, 2)
        sp = (qg @ kp.transpose(-1, -2)).transpose(1, 2).reshape(B, h, 1, P)
        p = (torch.cat([sp, q @ ks[:, :, :t].transpose(-1, -2)], -1) + bias).softmax(-1)
        op = (p[..., :P].reshape(U, G, h, P).transpose(1, 2) @ vp).transpose(1, 2).reshape(B, h, 1, D)
        return op + p[..., P:] @ vs[:, :, :t]

    variants = {"now": now, "keys transposed": transposed, "SDPA": sdpa, "cascade": cascade}
    for f in variants.values():
        torch.testing.assert_close(f(q), now(q), atol=1e-5, rtol=1e-4)
    fns = {}
    for name, f in variants.items():
        fns[f"{name}, eager"] = lambda f=f: f(q)
        cf = torch.compile(f)
        fns[f"{name}, compiled"] = lambda cf=cf: cf(q)
    t = race(fns, calls=20)
    print(f"one decode step's attention: {B} rows x {h} heads x {K} keys x {D} dims\n")
    print("| variant | µs |")
    print("| --- | --- |")
    for k, v in t.items():
        print(f"| {k} | {v * 1e6:.0f} |")


def probe_fused_forward(B: int = 32, T: int = 40) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      max_position_embeddings=128, tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    ids, att = torch.randint(3, 99, (B, T)), torch.ones(B, T, dtype=torch.long)
    nh, hd, inter = 4, 32, 512
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    emb = torch.cat([torch.outer(torch.arange(T, dtype=torch.float32), inv)] * 2, -1)
    cos = emb.cos().view(1, T, 1, hd)
    sin_s = (emb.sin() * torch.cat([-torch.ones(hd // 2), torch.ones(hd // 2)])).view(1, T, 1, hd)

    def rms(x, w):
        return F.rms_norm(x, (x.shape[-1],), w, cfg.rms_norm_eps)

    def fused(ids):
        x = model.model.embed_tokens(ids)
        for layer in model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv = F.linear(rms(x, layer.input_layernorm.weight),
                           torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])).view(B, T, 3 * nh, hd)
            qk = qkv[:, :, : 2 * nh]
            qk = torch.addcmul(qk * cos, qk.reshape(B, T, 2 * nh, 2, hd // 2).flip(3).reshape(B, T, 2 * nh, hd), sin_s)
            q, k, v = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2), qkv[:, :, 2 * nh :].transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, nh * hd)
            x = x + F.linear(o, a.o_proj.weight)
            gu = F.linear(rms(x, layer.post_attention_layernorm.weight), torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
            x = x + F.linear(F.silu(gu[..., :inter]) * gu[..., inter:], mlp.down_proj.weight)
        return rms(x, model.model.norm.weight)

    def hf(ids):
        return model.model(input_ids=ids, attention_mask=att).last_hidden_state

    with torch.no_grad():
        torch.testing.assert_close(fused(ids), hf(ids), atol=1e-5, rtol=1e-4)

    def train(fwd):
        def f():
            h = fwd(ids)
            (h * h).mean().backward()
        return f

    t = race({"HF, eager": train(hf), "fused, eager": train(fused),
              "HF, compiled": train(torch.compile(hf, dynamic=True)), "fused, compiled": train(torch.compile(fused, dynamic=True))},
             rounds=10, calls=3)
    print(f"forward + backward, 4 layers, {B} x {T} tokens\n")
    print("| variant | ms |")
    print("| --- | --- |")
    for k, v in t.items():
        print(f"| {k} | {v * 1e3:.1f} |")


def grpo_steps(steps: int) -> None:
    """The child of the ``malloc`` probe: eager warmstart GRPO steps of grpo_vs_trl.py's shape."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import grpo_vs_trl

    from warmstart.tasks.arithmetic import ChainArithmetic, ChainArithmeticConfig

    task = ChainArithmetic(ChainArithmeticConfig(n_demos=8 * (steps + 3), n_test=1), split="train")
    _, phase = grpo_vs_trl.build_warmstart(Path(tempfile.mkdtemp()), task.problems, steps + 3)
    for k in range(3):
        phase.step(k, k)
    walls, faults = [], []
    for k in range(3, steps + 3):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        phase.step(k, k)
        walls.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(f"RESULT {statistics.mean(walls):.4f} {statistics.mean(faults):.0f}")


def probe_malloc(pairs: int = 3, steps: int = 12) -> None:
    print("| pair | default: s/step | default: page faults/step | freed memory kept: s/step | page faults/step |")
    print("| --- | --- | --- | --- | --- |")
    for i in range(pairs):
        row = []
        for extra in ({}, KEEP_FREED):
            env = {k: v for k, v in os.environ.items() if k not in KEEP_FREED} | extra
            out = subprocess.run([sys.executable, __file__, "--grpo-child", str(steps), "--threads", str(torch.get_num_threads())],
                                 env=env, capture_output=True, text=True, check=True).stdout
            wall, faults = next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]
            row += [wall, faults]
        print(f"| {i + 1} | " + " | ".join(row) + " |")
    print("\nvariables of the second arm: " + " ".join(f"{k}={v}" for k, v in KEEP_FREED.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probes", nargs="*", help=f"which probes (default: all but malloc, which takes minutes): {', '.join(PROBES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--grpo-child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    unknown = [p for p in a.probes if p not in PROBES]
    if unknown:
        ap.error(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
    torch.set_num_threads(a.threads)
    if a.grpo_child is not None:
        grpo_steps(a.grpo_child)
        return
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd = env + ".venv/bin/python " + " ".join(shlex.quote(x) for x in sys.argv)
    print(f"command: {cmd}\ntorch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in a.probes or PROBES[:-1]:
        print(f"\n## {name}")
        {"mm": probe_mm, "mkl-pack": probe_mkl_pack, "decode-attention": probe_decode_attention,
         "fused-forward": probe_fused_forward, "malloc": probe_malloc}[name]()
    print(f"\ncommand: {cmd}")


if __name__ == "__main__":
    main()
