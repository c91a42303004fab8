"""GRPO speed, side by side: warmstart vs TRL's GRPOTrainer on the same tiny model, on CPU.

Both systems get the same tiny Llama (hidden 128, 4 layers, 4 heads, character tokenizer; one set of
initial weights, copied), the same prompts (7-term chain-arithmetic problems, BOS + text), the same
reward (a cheap Python function of the completion text), and the same step shape: 8 prompts x G = 8
completions = 64 completions of at most 32 new tokens at temperature 1, beta = 0, one optimizer step
per generation batch (mu / num_iterations = 1), fp32, AdamW, grad-norm clip 1.0.

TRL is set up for its best CPU speed: use_cpu, bf16 off, gradient checkpointing OFF (its default is
on), no logging, saving, reporting or progress bars.

Steps are interleaved so that background load on a shared machine hits both alike: the TRL trainer
runs its own loop, and a callback at the end of each TRL step runs one warmstart GRPO step (timed on
its own). A TRL step's time is the wall time from the end of that callback to TRL's next step end,
so it includes everything TRL does for a step (data loading, generation, rewards, loss, backward,
optimizer). The first ``--warmup`` steps of each are discarded.

    .venv/bin/python benchmarks/grpo_vs_trl.py [--steps 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS_PER_STEP, GROUP, MAX_NEW, LR = 8, 8, 32, 1e-4


def reward_text(completion: str, answer: str) -> float:
    """The shared reward: 1 for the right answer after the last '#', plus a small bonus for digits."""
    i = completion.rfind("#")
    right = 1.0 if i >= 0 and completion[i + 1 :].strip()[:1] == answer else 0.0
    return right + 0.01 * sum(c.isdigit() for c in completion)


# ------------------------------------------------------------------------------------- warmstart


def build_warmstart(tmp: Path, problems, total_steps: int):
    """A RunContext and a GRPO phase built from a recipe dict, with the benchmark's reward registered
    as a plug-in (what a user would do for their own reward)."""
    from pydantic import Field  # noqa: F401

    from warmstart.engine.config import RewardConfig, validate_recipe
    from warmstart.engine.run import build_context
    from warmstart.registry import PHASES, REWARDS

    class BenchRewardConfig(RewardConfig):
        kind: str = "bench_reward"

    @REWARDS.register("bench_reward", BenchRewardConfig)
    def bench_reward(cfg):
        """grpo_vs_trl.py's shared reward."""
        return lambda e: reward_text(e.text, e.info["answer"])

    path = tmp / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n" for p in problems))
    raw = {
        "name": "grpo_vs_trl",
        "seed": 0,
        "task": {"kind": "jsonl", "path": str(path), "test_fraction": 0.01, "max_new_tokens": MAX_NEW},
        "policy": {"kind": "lm", "hidden_size": 128, "num_layers": 4, "num_heads": 4, "max_position": 128},
        "rewards": [{"kind": "bench_reward"}],
        "phases": [{
            "kind": "grpo", "steps": total_steps, "prompts_per_step": PROMPTS_PER_STEP, "group_size": GROUP,
            "max_new_tokens": MAX_NEW, "temperature": 1.0, "top_p": 1.0, "lr": LR, "beta": 0.0, "mu": 1,
            "loss_aggregation": "token", "advantage_scale": "group", "max_grad_norm": 1.0,
        }],
    }
    recipe = validate_recipe(raw, source="grpo_vs_trl.py")
    ctx = build_context(recipe)
    phase = PHASES.get("grpo").factory(recipe.phases[0], ctx)
    phase.on_start(0)
    return ctx, phase


# ------------------------------------------------------------------------------------------- TRL


def build_trl(model, tokenizer, problems, total_steps: int, out_dir: Path, callback):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    bos = tokenizer.bos_token  # warmstart prompts are BOS + text; "<s>" is read as the BOS special token
    ds = Dataset.from_list([{"prompt": bos + p.prompt, "answer": p.answer} for p in problems])

    def trl_reward(prompts, completions, answer, **kw):
        return [reward_text(c, a) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
        gradient_accumulation_steps=1,
        num_generations=GROUP,
        max_completion_length=MAX_NEW,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        loss_type="dapo",
        scale_rewards="group",
        max_steps=total_steps,
        shuffle_dataset=False,
        logging_steps=10**9,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        seed=0,
    )
    return GRPOTrainer(model=model, reward_funcs=trl_reward, args=args, train_dataset=ds,
                       processing_class=tokenizer, callbacks=[callback])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each system")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps of each system")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both systems (default: torch's choice, one per core)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cmd = "OMP_NUM_THREADS=%s " % __import__("os").environ["OMP_NUM_THREADS"] if "OMP_NUM_THREADS" in __import__("os").environ else ""
    cmd += ".venv/bin/python " + " ".join(shlex.quote(x) for x in sys.argv)
    print(f"command: {cmd}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    import copy
    import trl
    from transformers import TrainerCallback

    from warmstart.engine.logging import quiet_hf
    from warmstart.tasks.arithmetic import ChainArithmetic, ChainArithmeticConfig

    quiet_hf()
    total = a.steps + a.warmup
    task = ChainArithmetic(ChainArithmeticConfig(n_demos=PROMPTS_PER_STEP * (total + 4), n_test=1), split="train")
    problems = task.problems
    tmp = Path(tempfile.mkdtemp(prefix="grpo_vs_trl-"))
    ctx, phase = build_warmstart(tmp, problems, total)
    trl_model = copy.deepcopy(ctx.policy.model)  # same initial weights
    tokenizer = copy.deepcopy(ctx.policy.tokenizer)
    n_params = sum(p.numel() for p in trl_model.parameters())

    rec = {"ws_time": [], "ws_tok": [], "ws_gen": [], "trl_time": [], "trl_tok": [], "trl_gen": []}
    trl_gen = [0.0]  # generation time of the current TRL step

    class Interleave(TrainerCallback):
        def __init__(self):
            self.t_mark = None

        def on_train_begin(self, args, state, control, **kw):
            self.t_mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t_trl = time.perf_counter() - self.t_mark
            lens = trainer._metrics["train"]["completions/mean_length"]
            rec["trl_time"].append(t_trl)
            rec["trl_tok"].append(lens[-1] if lens else float("nan"))
            rec["trl_gen"].append(trl_gen[0])
            trl_gen[0] = 0.0
            k = len(rec["ws_time"])
            t0 = time.perf_counter()
            m = phase.step(k, k)
            rec["ws_time"].append(time.perf_counter() - t0)
            rec["ws_tok"].append(m["completion_tokens"])
            rec["ws_gen"].append(m["completion_tokens"] * PROMPTS_PER_STEP * GROUP / m["sample_tokens_per_s"])
            print(f"  step {k + 1:>3}/{total}: TRL {t_trl:6.2f} s ({rec['trl_tok'][-1]:.1f} tok/row)   "
                  f"warmstart {rec['ws_time'][-1]:6.2f} s ({m['completion_tokens']:.1f} tok/row)", flush=True)
            self.t_mark = time.perf_counter()

    trainer = build_trl(trl_model, tokenizer, problems, total, tmp / "trl", Interleave())
    assert not trainer.args.gradient_checkpointing and not trainer.args.bf16
    gen_fn = trainer._generate_single_turn  # timed for the breakdown only (TRL's generation call)

    def timed_gen(*args, **kw):
        t0 = time.perf_counter()
        try:
            return gen_fn(*args, **kw)
        finally:
            trl_gen[0] += time.perf_counter() - t0

    trainer._generate_single_turn = timed_gen
    trainer.train()

    w = a.warmup
    ws_t, trl_t = rec["ws_time"][w:], rec["trl_time"][w:]
    ws_tok, trl_tok = statistics.mean(rec["ws_tok"][w:]), statistics.mean(rec["trl_tok"][w:])
    n = PROMPTS_PER_STEP * GROUP
    ws_sps, trl_sps = len(ws_t) / sum(ws_t), len(trl_t) / sum(trl_t)
    ws_tps, trl_tps = ws_sps * ws_tok * n, trl_sps * trl_tok * n
    print()
    print(f"GRPO step: {PROMPTS_PER_STEP} prompts x G={GROUP} = {n} completions, <= {MAX_NEW} new tokens, beta=0, mu=1, "
          f"fp32 CPU; tiny Llama {n_params / 1e6:.2f}M params; {len(ws_t)} timed steps each after {w} warm-up, interleaved")
    print(f"TRL {trl.__version__}: use_cpu, bf16 off, gradient_checkpointing off, no logging/saving/tqdm")
    print()
    ws_g, trl_g = statistics.mean(rec["ws_gen"][w:]), statistics.mean(rec["trl_gen"][w:])
    ws_s, trl_s = sum(ws_t) / len(ws_t), sum(trl_t) / len(trl_t)
    print("| system    | steps/s | s/step (mean) | generation s/step | rest s/step | completion tokens/row | completion tokens/s |")
    print("| --------- | ------- | ------------- | ----------------- | ----------- | --------------------- | ------------------- |")
    print(f"| TRL       | {trl_sps:7.3f} | {trl_s:13.3f} | {trl_g:17.3f} | {trl_s - trl_g:11.3f} | {trl_tok:21.1f} | {trl_tps:19.0f} |")
    print(f"| warmstart | {ws_sps:7.3f} | {ws_s:13.3f} | {ws_g:17.3f} | {ws_s - ws_g:11.3f} | {ws_tok:21.1f} | {ws_tps:19.0f} |")
    print(f"| ws / TRL  | {ws_sps / trl_sps:6.2f}x | | {trl_g / ws_g:16.2f}x | {(trl_s - trl_g) / (ws_s - ws_g):10.2f}x | | {ws_tps / trl_tps:18.2f}x |")
    print("(ratios are speed-ups: TRL time / warmstart time; 'rest' = rewards, loss, backward, optimizer, overhead)")
    print()
    print(f"target: warmstart >= 2x TRL steps/s -> {'MET' if ws_sps / trl_sps >= 2 else 'NOT MET'}")
    print(f"command: {cmd}")


if __name__ == "__main__":
    main()
