"""LoRA against full fine-tuning on the real SmolLM2-135M-Instruct: trainable parameters, the memory
that training state takes (weights that get gradients + their gradients + AdamW's two moments),
peak resident memory, and sampling / training tokens per second of GRPO steps.

One process holds both policies (the same pretrained weights; one with peft LoRA adapters on every
linear layer) and alternates GRPO steps between them -- full, LoRA, full, LoRA ... -- on the same
problems with the same seeds, so both see the same load; speeds are medians over the rounds. Peak
RSS is measured per variant in its own child process (``--rss-only``: load, one step, report).

    python benchmarks/lora_vs_full.py --rounds 3 [--prompts 2 --group 4 --new-tokens 32 --r 16]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(variant: str, args):
    """(policy, GRPO phase) for one variant, through the recipe machinery (the smollm2-grpo recipe)."""
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import build_context
    from warmstart.registry import PHASES

    sets = [f"phases.grpo.prompts_per_step={args.prompts}", f"phases.grpo.group_size={args.group}",
            f"phases.grpo.max_new_tokens={args.new_tokens}", "eval.n=1"]
    if variant == "lora":  # the recipe's own learning rate
        sets += [f"policy.lora={{r: {args.r}, alpha: {2 * args.r}}}"]
    else:  # the recipe has LoRA on: full fine-tuning must switch it off (and takes a 10x smaller lr)
        sets += ["policy.lora=null", "phases.grpo.lr=3.0e-5"]
    recipe, _ = load_recipe(ROOT / "recipes" / "smollm2-grpo.yaml", sets)
    ctx = build_context(recipe)
    phase = PHASES.get("grpo").factory(recipe.phases[0], ctx)
    phase.on_start(0)
    return ctx.policy, phase


def state_bytes(policy) -> dict:
    """Trainable parameters and the bytes of training state they imply (fp32: weight + grad + 2 Adam moments)."""
    trainable = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.model.parameters())
    return {"params": total, "trainable": trainable, "train_state_mb": trainable * 4 * 3 / 2**20,
            "weights_mb": total * 4 / 2**20}


def rss_only(variant: str, args) -> None:
    torch.set_num_threads(1)
    policy, phase = build(variant, args)
    phase.step(0, 0)
    # VmHWM: this program image's own high-water mark. Not ru_maxrss: Linux keeps that across fork and
    # execve, so a child of this script's parent (two SmolLM2 policies resident, 5.2 GB) reported the
    # parent's figure for both variants (RESULTS, issue 19)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"variant": variant, "peak_rss_mb": hwm / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rss-only", choices=["full", "lora"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS child processes")
    args = ap.parse_args()
    if args.rss_only:
        return rss_only(args.rss_only, args)
    torch.set_num_threads(1)
    cmd = "python benchmarks/lora_vs_full.py " + " ".join(sys.argv[1:])
    pols = {v: build(v, args) for v in ("full", "lora")}
    rows = {v: [] for v in pols}
    for k in range(args.rounds):
        for v, (policy, phase) in pols.items():
            t0 = time.time()
            m = phase.step(k, k)  # same global step -> same problems and sampling seed for both
            rows[v].append({"step_s": time.time() - t0, "sample": m["sample_tokens_per_s"],
                            "train": m["train_tokens_per_s"], "reward": m["reward"]})
            print(json.dumps({"variant": v, "round": k, **rows[v][-1]}), flush=True)
    rss = {}
    if not args.no_rss:
        for v in pols:
            out = subprocess.run([sys.executable, __file__, "--rss-only", v, "--prompts", str(args.prompts), "--group",
                                  str(args.group), "--new-tokens", str(args.new_tokens), "--r", str(args.r)],
                                 capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            rss[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"] if out.returncode == 0 else float("nan")
    print(f"\n# {cmd}")
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min); {args.prompts} prompts x G={args.group}, "
          f"{args.new_tokens} new tokens; medians over {args.rounds} interleaved rounds")
    print(f"{'variant':>7} {'trainable':>12} {'train state MB':>14} {'peak RSS MB':>11} {'s/step':>7} "
          f"{'sample tok/s':>12} {'train tok/s':>11}")
    med = {}
    for v, (policy, _) in pols.items():
        sb = state_bytes(policy)
        med[v] = {k: statistics.median(r[k] for r in rows[v]) for k in ("step_s", "sample", "train")}
        print(f"{v:>7} {sb['trainable']:>12,} {sb['train_state_mb']:>14.1f} {rss.get(v, float('nan')):>11.0f} "
              f"{med[v]['step_s']:>7.1f} {med[v]['sample']:>12.1f} {med[v]['train']:>11.1f}")
    for v in pols:
        print(f"{v} learning curve (mean reward per round, the same problems for both): "
              + " ".join(f"{r['reward']:.3f}" for r in rows[v]))
    print(f"LoRA / full: train tok/s x{med['lora']['train'] / med['full']['train']:.2f}, sample tok/s "
          f"x{med['lora']['sample'] / med['full']['sample']:.2f}, step time x{med['lora']['step_s'] / med['full']['step_s']:.2f}")


if __name__ == "__main__":
    main()
