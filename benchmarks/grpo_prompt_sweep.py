"""GRPO training-pass time against prompt length: prompt-shared + action-position logits vs the plain path.

One GRPO training pass (the clipped loss's forward and backward over one batch, what
``grpo_update`` runs per micro-batch) for 4 prompts x G = 8 completions of a fixed 32 tokens, with
the prompt grown from 16 to 512 tokens, on a tiny Llama (hidden 128, 4 layers, the quickstart's
size; ``--vocab`` sets its vocabulary, the LM head's width). Two paths on the same weights and
batch, interleaved, median of ``--reps``, timed as this process's CPU time (one thread, so that
other processes on a shared machine do not distort it; wall time is printed beside it):

* ``shared``: ``LMPolicy.forward_logprobs(..., action_mask=...)``: each group's prompt forwarded
  once, LM head at the completion positions only (warmstart's default since issue 19);
* ``plain``: full logits at every position, every row's prompt forwarded on its own (warmstart
  before issue 19, and what TRL's GRPOTrainer does: the same HF forward/backward over the G full
  sequences).

Writes ``grpo_prompt_sweep.json`` and ``grpo_prompt_sweep.png`` beside this file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_prompt_sweep.py [--reps 3]

``--whole-steps`` times whole GRPO steps instead, warmstart against TRL's GRPOTrainer: for each
prompt length one ``grpo_vs_trl.py --prompt-len P`` run (its step shape: 8 prompts x G = 8, <= 32
new tokens, tiny Llama with hidden 128, steps interleaved, one thread), collected into
``grpo_prompt_sweep_steps.json`` / ``.png``:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grpo_prompt_sweep.py --whole-steps [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from warmstart.episode import Episode, collate
from warmstart.learn.grpo import GRPOConfig, policy_gradient_loss
from warmstart.policies.lm import LMPolicy, LMPolicyConfig, make_lm_policy

PROMPTS, G, COMPLETION = 4, 8, 32


def batch_for(policy, prompt_len: int, gen: torch.Generator):
    V = len(policy.tokenizer)
    eps = []
    for gi in range(PROMPTS):
        prompt = torch.randint(3, V, (prompt_len,), generator=gen).tolist()
        for _ in range(G):
            e = Episode(prompt="", prompt_ids=prompt, group=gi)
            e.add_turn(torch.randint(3, V, (COMPLETION,), generator=gen).tolist(), [-1.0] * COMPLETION)
            eps.append(e)
    return collate(eps, policy.pad_id)


class Plain:
    """The plain path: full logits at every position (``action_mask`` ignored)."""

    def __init__(self, policy):
        self.policy = policy

    def forward_logprobs(self, input_ids, attention_mask, temperature=1.0, with_entropy=False, action_mask=None):
        return LMPolicy.forward_logprobs(self.policy, input_ids, attention_mask, temperature, with_entropy)


def train_pass(policy_like, model, batch, cfg) -> tuple[float, float]:
    """(wall s, CPU s of this process) of one loss forward + backward."""
    model.zero_grad(set_to_none=True)
    adv = torch.linspace(-1, 1, batch.input_ids.shape[0]).unsqueeze(1).expand_as(batch.old_logprobs)
    t0, c0 = time.perf_counter(), time.process_time()
    policy_gradient_loss(policy_like, batch, adv, cfg)["loss"].backward()
    return time.perf_counter() - t0, time.process_time() - c0


def whole_steps(lengths: list[int], steps: int, cmd: str) -> None:
    """Whole GRPO steps of TRL and warmstart at each prompt length (one grpo_vs_trl.py process each)."""
    import subprocess
    import tempfile

    here = Path(__file__).resolve().parent
    rows = []
    print("| prompt tokens | TRL s/step | warmstart s/step | speed-up | TRL CPU s | warmstart CPU s | speed-up (CPU) | TRL gen s | warmstart gen s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for P in lengths:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            run = [sys.executable, str(here / "grpo_vs_trl.py"), "--prompt-len", str(P), "--steps", str(steps),
                   "--warmup", "1", "--threads", "1", "--json", f.name]
            done = subprocess.run(run, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise SystemExit(f"grpo_vs_trl.py --prompt-len {P} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            res = json.loads(Path(f.name).read_text())["systems"]
        t, w = res["TRL"], res["warmstart"]
        rows.append({"prompt_tokens": P, "trl": t, "warmstart": w})
        print(f"| {P} | {t['s_per_step']:.3f} | {w['s_per_step']:.3f} | {t['s_per_step'] / w['s_per_step']:.2f}x "
              f"| {t['cpu_s_median']:.3f} | {w['cpu_s_median']:.3f} | {t['cpu_s_median'] / w['cpu_s_median']:.2f}x "
              f"| {t['generation_s']:.3f} | {w['generation_s']:.3f} |", flush=True)
    out = here / "grpo_prompt_sweep_steps.json"
    out.write_text(json.dumps({"command": cmd, "steps": steps, "load_end": os.getloadavg(), "rows": rows}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["prompt_tokens"] for r in rows]
    ax.plot(xs, [r["trl"]["cpu_s_median"] for r in rows], "o-", label="TRL GRPOTrainer")
    ax.plot(xs, [r["warmstart"]["cpu_s_median"] for r in rows], "s-", label="warmstart")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens (completions <= 32)")
    ax.set_ylabel("whole GRPO step, CPU s (median)")
    ax.set_title("GRPO step vs prompt length, 8 prompts x G=8, tiny Llama", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"load average at end {os.getloadavg()}\nwrote {out} and {out.with_suffix('.png')}\ncommand: {cmd}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lengths", default="16,32,64,128,256,512")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary size (0: the character tokenizer's ~100)")
    ap.add_argument("--whole-steps", action="store_true", help="time whole GRPO steps against TRL (grpo_vs_trl.py per length)")
    ap.add_argument("--steps", type=int, default=3, help="--whole-steps: timed steps per length (after one warm-up)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cmd = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python " + " ".join(shlex.quote(x) for x in sys.argv)
    print(f"command: {cmd}\nload average at start {os.getloadavg()}")
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.whole_steps:
        whole_steps(lengths, a.steps, cmd)
        return
    policy = make_lm_policy(LMPolicyConfig(hidden_size=128, num_layers=4, num_heads=8, max_position=max(lengths) + COMPLETION + 8), seed=0)
    if a.vocab:  # a wider head (the character tokenizer's ids stay valid: they are < vocab)
        policy.model.resize_token_embeddings(a.vocab)
    model = policy.model.train()
    cfg = GRPOConfig(kind="grpo")
    gen = torch.Generator().manual_seed(0)
    rows = []
    print("| prompt tokens | plain CPU s | shared CPU s | speed-up (CPU) | plain wall s | shared wall s | speed-up (wall) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for P in lengths:
        batch = batch_for(policy, P, gen)
        train_pass(policy, model, batch, cfg)  # warm-up of both (first-call kernels)
        train_pass(Plain(policy), model, batch, cfg)
        t = {"shared": [], "plain": []}
        for _ in range(a.reps):
            t["plain"].append(train_pass(Plain(policy), model, batch, cfg))
            t["shared"].append(train_pass(policy, model, batch, cfg))
        med = {k: statistics.median(x[1] for x in v) for k, v in t.items()}  # CPU time: robust on a shared machine
        wall = {k: statistics.median(x[0] for x in v) for k, v in t.items()}
        rows.append({"prompt_tokens": P, "plain_s": med["plain"], "shared_s": med["shared"], "plain_wall_s": wall["plain"],
                     "shared_wall_s": wall["shared"], "runs_wall_cpu": t})
        print(f"| {P} | {med['plain']:.3f} | {med['shared']:.3f} | {med['plain'] / med['shared']:.2f}x "
              f"| {wall['plain']:.3f} | {wall['shared']:.3f} | {wall['plain'] / wall['shared']:.2f}x |", flush=True)
    vocab = model.get_output_embeddings().weight.shape[0]
    out = Path(__file__).with_name("grpo_prompt_sweep.json")
    out.write_text(json.dumps({"command": cmd, "vocab": vocab, "prompts": PROMPTS, "group": G, "completion": COMPLETION,
                               "load_end": os.getloadavg(), "rows": rows}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["prompt_tokens"] for r in rows]
    ax.plot(xs, [r["plain_s"] for r in rows], "o-", label="plain (full logits, G prompt copies; = TRL's training pass)")
    ax.plot(xs, [r["shared_s"] for r in rows], "s-", label="warmstart (prompt shared, action-position logits)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens (completion fixed at 32)")
    ax.set_ylabel("training pass, CPU s (median)")
    ax.set_title(f"GRPO training pass, {PROMPTS} prompts x G={G}, vocab {vocab}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"load average at end {os.getloadavg()}\nwrote {out} and {out.with_suffix('.png')}\ncommand: {cmd}")


if __name__ == "__main__":
    main()
