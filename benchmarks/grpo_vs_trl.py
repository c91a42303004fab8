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

``--model DIR`` (or ``--model smollm2``: the converted SmolLM2-135M-Instruct) runs the same
comparison on a real pretrained model: chat-formatted word problems (both systems apply the
tokenizer's chat template), a reward for the number on the final ``####`` line, 4 prompts x G = 4,
<= 64 new tokens. ``--plain`` adds a third arm, warmstart's pre-issue-19 training forward (full
logits at every position, every row's prompt forwarded on its own), to show what prompt sharing and
action-position logits buy; ``--compile`` adds warmstart with ``policy.compile: true`` (its first
steps include the compilation; ``--warmup`` hides it from the timed means, the log shows it). Peak memory is each step's resident-set high-water mark above its
start, sampled every 5 ms (the systems share one process, so process-wide peaks cannot separate them).
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
MARKER = "#"  # the answer follows the last marker: '#' for the tiny model's arithmetic, '####' for word problems


def reward_text(completion: str, answer: str) -> float:
    """The shared reward: 1 for the right answer after the last marker, plus a small bonus for digits."""
    i = completion.rfind(MARKER)
    got = completion[i + len(MARKER) :].strip().split("\n")[0].strip() if i >= 0 else ""
    right = 1.0 if i >= 0 and (got[:1] == answer if MARKER == "#" else got == answer) else 0.0
    return right + 0.01 * sum(c.isdigit() for c in completion)


def word_problems(n: int, seed: int = 0):
    """``n`` short GSM8K-style word problems (a count changed by one or two steps), as Problems."""
    import random

    from warmstart.tasks.base import Problem

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, thing = rng.choice(["Mia", "Tom", "Ava", "Leo", "Sam"]), rng.choice(["apples", "pencils", "marbles", "books"])
        a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 5)
        text = f"{name} has {a} {thing}. {name} buys {b} more {thing}, then gives away {c}. How many {thing} does {name} have now?"
        out.append(Problem(prompt=text + "\nWrite the final answer on the last line as '#### <number>'.", answer=str(a + b - c)))
    return out


class PeakRSS:
    """Resident-set high-water mark above a starting point, sampled every 5 ms by a thread."""

    def __init__(self):
        import threading

        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> float:
        """Stop sampling; the peak above the start, in MB."""
        self._stop.set()
        self._t.join()
        return (max(self.peak, self._rss()) - self.base) / 2**20


# ------------------------------------------------------------------------------------- warmstart


def lengthen(problem, n: int):
    """``problem`` with a fixed filler before its prompt, so that BOS + prompt is ``n`` characters
    (= tokens of the character tokenizer); the question stays at the end, where the answer follows."""
    from dataclasses import replace

    filler = "".join(str(i % 10) + "+*"[i % 2] for i in range(n)) + " "
    keep = max(0, n - 1 - len(problem.prompt))
    return replace(problem, prompt=filler[:keep] + problem.prompt)


def build_warmstart(tmp: Path, problems, total_steps: int, model_dir: str | None = None, compile: bool = False,
                    max_position: int = 128):
    """A RunContext and a GRPO phase built from a recipe dict, with the benchmark's reward registered
    as a plug-in (what a user would do for their own reward)."""
    from pydantic import Field  # noqa: F401

    from warmstart.engine.config import RewardConfig, validate_recipe
    from warmstart.engine.run import build_context
    from warmstart.registry import PHASES, REWARDS

    class BenchRewardConfig(RewardConfig):
        kind: str = "bench_reward"

    if "bench_reward" not in REWARDS:
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
        "policy": ({"kind": "lm", "path": model_dir, "compile": compile} if model_dir else
                   {"kind": "lm", "hidden_size": 128, "num_layers": 4, "num_heads": 4, "max_position": max_position, "compile": compile}),
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


def build_trl(model, tokenizer, problems, total_steps: int, out_dir: Path, callback, chat: bool = False):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if chat:  # conversational prompts: TRL applies the tokenizer's chat template, as warmstart's encode_prompt
        ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}], "answer": p.answer} for p in problems])
    else:
        bos = tokenizer.bos_token  # warmstart prompts are BOS + text; "<s>" is read as the BOS special token
        ds = Dataset.from_list([{"prompt": bos + p.prompt, "answer": p.answer} for p in problems])

    def trl_reward(prompts, completions, answer, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]  # conversational: messages
        return [reward_text(t, a) for t, a in zip(texts, answer)]

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


def plain_forward(policy):
    """Make ``policy`` train the pre-issue-19 way: full logits at every position, no shared prompts."""
    from warmstart.policies.lm import LMPolicy

    def forward_logprobs(input_ids, attention_mask, temperature=1.0, with_entropy=False, action_mask=None):
        return LMPolicy.forward_logprobs(policy, input_ids, attention_mask, temperature, with_entropy)

    policy.forward_logprobs = forward_logprobs


def run_alone(system: str, arms: dict, problems, total: int, tmp: Path, chat: bool) -> None:
    """``--only``: run ``total`` steps of one system in this process and print its memory as JSON:
    the resident set after setup (model, optimizer not yet stepped) and its high-water mark during
    the steps (sampled every 5 ms), so that neither system's allocations hide the other's."""
    import copy
    import gc

    from transformers import TrainerCallback

    ctx, phase = arms.pop("warmstart")
    if system == "TRL":
        model, tok = copy.deepcopy(ctx.policy.model), copy.deepcopy(ctx.policy.tokenizer)
        del ctx, phase
        arms.clear()
        gc.collect()
        trainer = build_trl(model, tok, problems, total, tmp / "trl", TrainerCallback(), chat=chat)
        mem = PeakRSS()
        trainer.train()
    else:
        mem = PeakRSS()
        for k in range(total):
            phase.step(k, k)
    base = mem.base
    above = mem.stop()
    print(json.dumps({"system": system, "setup_rss_mb": base / 2**20, "peak_rss_mb": base / 2**20 + above,
                      "peak_above_setup_mb": above}))


def memory_of_each(a) -> None:
    """``--memory``: each system alone in a child process (``--only``), same step shape; a table of
    resident memory after setup and at the peak of the steps."""
    import os
    import subprocess

    print("command: " + " ".join(shlex.quote(x) for x in [".venv/bin/python", *sys.argv]))
    print(f"load average at start {os.getloadavg()}")
    base = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    base += (["--model", a.model] if a.model else []) + (["--threads", str(a.threads)] if a.threads else [])
    print("| system | RSS after setup MB | peak RSS during steps MB | peak above setup MB |")
    print("| --- | --- | --- | --- |")
    for system in ("TRL", "warmstart"):
        done = subprocess.run(base + ["--only", system], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"--only {system} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {system} | {r['setup_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_above_setup_mb']:.0f} |", flush=True)


def main() -> None:
    global PROMPTS_PER_STEP, GROUP, MAX_NEW, MARKER
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each system")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps of each system")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both systems (default: torch's choice, one per core)")
    ap.add_argument("--model", default=None,
                    help="a local HF model directory (or 'smollm2') instead of the tiny Llama: chat word problems, 4 x G=4, <= 64 tokens")
    ap.add_argument("--plain", action="store_true", help="also time warmstart's plain training forward (no prompt sharing, full logits)")
    ap.add_argument("--compile", action="store_true", help="also time warmstart with policy.compile: true")
    ap.add_argument("--prompt-len", type=int, default=0,
                    help="tiny model: lengthen every prompt to this many tokens with a fixed filler before the problem "
                         "(the prompt-length sweep, grpo_prompt_sweep.py --whole-steps)")
    ap.add_argument("--json", default=None, help="also write the per-system figures to this JSON file")
    ap.add_argument("--memory", action="store_true",
                    help="instead of timing: each system's peak memory, measured alone in its own process (--only)")
    ap.add_argument("--only", choices=["TRL", "warmstart"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.memory:
        return memory_of_each(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    cmd = "OMP_NUM_THREADS=%s " % __import__("os").environ["OMP_NUM_THREADS"] if "OMP_NUM_THREADS" in __import__("os").environ else ""
    cmd += ".venv/bin/python " + " ".join(shlex.quote(x) for x in sys.argv)
    print(f"command: {cmd}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average at start {__import__('os').getloadavg()}")

    import copy
    import trl
    from transformers import TrainerCallback

    from warmstart.engine.logging import quiet_hf

    quiet_hf()
    total = a.steps + a.warmup
    model_dir = a.model
    if model_dir == "smollm2":
        from warmstart.policies.pretrained import smollm2_path

        model_dir = str(smollm2_path())
    if model_dir:
        PROMPTS_PER_STEP, GROUP, MAX_NEW, MARKER = 4, 4, 64, "####"
        problems = word_problems(PROMPTS_PER_STEP * (total + 4) * (2 + a.plain + a.compile))
    else:
        from warmstart.tasks.arithmetic import ChainArithmetic, ChainArithmeticConfig

        task = ChainArithmetic(ChainArithmeticConfig(n_demos=PROMPTS_PER_STEP * (total + 4), n_test=1), split="train")
        problems = task.problems
        if a.prompt_len:
            problems = [lengthen(p, a.prompt_len) for p in problems]
    tmp = Path(tempfile.mkdtemp(prefix="grpo_vs_trl-"))
    max_pos = max(128, a.prompt_len + MAX_NEW + 8)
    arms = {"warmstart": build_warmstart(tmp, problems, total, model_dir, max_position=max_pos)}
    if a.plain:
        (tmp / "plain").mkdir()
        arms["ws plain"] = build_warmstart(tmp / "plain", problems, total, model_dir, max_position=max_pos)
        arms["ws plain"][1].policy.model.load_state_dict(arms["warmstart"][0].policy.model.state_dict())
        plain_forward(arms["ws plain"][0].policy)
    if a.compile:
        (tmp / "compiled").mkdir()
        arms["ws compile"] = build_warmstart(tmp / "compiled", problems, total, model_dir, compile=True, max_position=max_pos)
        arms["ws compile"][1].policy.model.load_state_dict(arms["warmstart"][0].policy.model.state_dict())
    if a.only:
        return run_alone(a.only, arms, problems, total, tmp, chat=bool(model_dir))
    ctx = arms["warmstart"][0]
    trl_model = copy.deepcopy(ctx.policy.model)  # same initial weights
    tokenizer = copy.deepcopy(ctx.policy.tokenizer)
    n_params = sum(p.numel() for p in trl_model.parameters())
    names = ["TRL", *arms]
    rec = {n: {"time": [], "cpu": [], "tok": [], "gen": [], "mem": []} for n in names}
    trl_gen = [0.0]  # generation time of the current TRL step

    class Interleave(TrainerCallback):
        def __init__(self):
            self.t_mark = self.c_mark = None
            self.mem = None

        def on_train_begin(self, args, state, control, **kw):
            self.mem = PeakRSS()
            self.t_mark, self.c_mark = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            t_trl, c_trl = time.perf_counter() - self.t_mark, time.process_time() - self.c_mark
            r = rec["TRL"]
            r["cpu"].append(c_trl)
            r["mem"].append(self.mem.stop())
            lens = trainer._metrics["train"]["completions/mean_length"]
            r["time"].append(t_trl)
            r["tok"].append(lens[-1] if lens else float("nan"))
            r["gen"].append(trl_gen[0])
            trl_gen[0] = 0.0
            k = len(rec["warmstart"]["time"])
            line = f"  step {k + 1:>3}/{total}: TRL {t_trl:6.2f} s, CPU {c_trl:6.2f} s ({r['tok'][-1]:.1f} tok/row)"
            for name, (_, phase) in arms.items():
                mem = PeakRSS()
                t0, c0 = time.perf_counter(), time.process_time()
                m = phase.step(k, k)
                r = rec[name]
                r["time"].append(time.perf_counter() - t0)
                r["cpu"].append(time.process_time() - c0)
                r["mem"].append(mem.stop())
                r["tok"].append(m["completion_tokens"])
                r["gen"].append(m["completion_tokens"] * PROMPTS_PER_STEP * GROUP / m["sample_tokens_per_s"])
                line += f"   {name} {r['time'][-1]:6.2f} s, CPU {r['cpu'][-1]:6.2f} s ({m['completion_tokens']:.1f} tok/row)"
            print(line, flush=True)
            self.mem = PeakRSS()
            self.t_mark, self.c_mark = time.perf_counter(), time.process_time()

    trainer = build_trl(trl_model, tokenizer, problems, total, tmp / "trl", Interleave(), chat=bool(model_dir))
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
    n = PROMPTS_PER_STEP * GROUP
    what = f"{Path(model_dir).name} (chat word problems)" if model_dir else "tiny Llama"
    print()
    print(f"GRPO step: {PROMPTS_PER_STEP} prompts x G={GROUP} = {n} completions, <= {MAX_NEW} new tokens, beta=0, mu=1, "
          f"fp32 CPU; {what} {n_params / 1e6:.2f}M params; {a.steps} timed steps each after {w} warm-up, interleaved")
    print(f"TRL {trl.__version__}: use_cpu, bf16 off, gradient_checkpointing off, no logging/saving/tqdm")
    print(f"load average at end {__import__('os').getloadavg()}")
    print()
    stats = {}
    for name in names:
        r = rec[name]
        t = r["time"][w:]
        s_step, gen, tok = statistics.mean(t), statistics.mean(r["gen"][w:]), statistics.mean(r["tok"][w:])
        stats[name] = (1 / s_step, s_step, gen, s_step - gen, tok, tok * n / s_step, max(r["mem"][w:]),
                       statistics.median(r["cpu"][w:]))
    print("| system    | steps/s | s/step (mean) | generation s/step | rest s/step | completion tokens/row | completion tokens/s | peak step memory MB | CPU s/step (median) |")
    print("| --------- | ------- | ------------- | ----------------- | ----------- | --------------------- | ------------------- | ------------------- | ------------------- |")
    for name in names:
        sps, s_step, gen, rest, tok, tps, mem, cpu = stats[name]
        print(f"| {name:<9} | {sps:7.3f} | {s_step:13.3f} | {gen:17.3f} | {rest:11.3f} | {tok:21.1f} | {tps:19.0f} | {mem:19.0f} | {cpu:19.2f} |")
    t = stats["TRL"]
    for name in arms:
        x = stats[name]
        print(f"| {name + ' / TRL':<9} | {x[0] / t[0]:6.2f}x | | {t[2] / x[2]:16.2f}x | {t[3] / x[3]:10.2f}x | | {x[5] / t[5]:18.2f}x | | {t[7] / x[7]:18.2f}x |")
    print("(ratios are speed-ups: TRL time / warmstart time; 'rest' = rewards, loss, backward, optimizer, overhead;")
    print(" peak step memory = resident-set high-water mark during a step above its start, max over timed steps;")
    print(" CPU s = this process's CPU time: with one thread, the work done, whatever else loads the machine)")
    print()
    for name in arms:
        ratio = stats[name][0] / t[0]
        print(f"target: {name} >= 2x TRL steps/s -> {'MET' if ratio >= 2 else 'NOT MET'} ({ratio:.2f}x)")
    if a.json:
        keys = ("steps_per_s", "s_per_step", "generation_s", "rest_s", "completion_tokens", "completion_tokens_per_s",
                "peak_step_memory_mb", "cpu_s_median")
        Path(a.json).write_text(json.dumps({"command": cmd, "prompt_len": a.prompt_len, "load_end": __import__("os").getloadavg(),
                                            "systems": {n: dict(zip(keys, v)) for n, v in stats.items()}}, indent=1))
    print(f"command: {cmd}")


if __name__ == "__main__":
    main()
