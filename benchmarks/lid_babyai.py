"""LID on BabyAI: LM init vs random init, hindsight relabelling vs self-imitation, natural vs
arbitrary observation encoding, on held-out goal combinations.

Per seed (all on ``BabyAI-GoToLocal-v0``, episodes capped at ``--max-steps`` env steps; 6 of the 18
colour x type goals held out of training, see ``warmstart.tasks.babyai.DEFAULT_HELD_OUT``):

1. bot demonstrations on ``--demos`` training missions (seen goals only), the same for every variant;
2. three policies behaviour-cloned on them with the same updates and learning rate: SmolLM2 init
   with natural-language words (``lm``), the same architecture at random init (``random``), SmolLM2
   init with arbitrary-token words (``lm-arbitrary``); each evaluated (``init``);
3. from the ``lm`` BC policy, ``--rounds`` rounds of active data gathering twice: with hindsight
   relabelling and with plain self-imitation -- the same training missions, the same env-step
   budget per round and the same updates; each evaluated (``final``).

Evaluation: greedy, ``--eval`` episodes per split (seen / unseen goal combinations) on fixed seeds
disjoint from training. The bot's own success rate on those seeds is the ceiling. ``--speed``
instead measures env steps/s (bot, random actions, policy rollouts) and BC samples/s alone, one
thing at a time.

    python benchmarks/lid_babyai.py [--seeds 1 2 3] [--layers 1] [--out benchmarks/lid_babyai.json]
    python benchmarks/lid_babyai.py --speed
    python benchmarks/lid_babyai.py --report benchmarks/lid_babyai.json [more.json ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from _vector_common import command_line, machine, table

LEVEL = "BabyAI-GoToLocal-v0"


def build(init: str, encoding: str, layers: int, seed: int):
    from warmstart.policies.lid import LIDPolicy
    from warmstart.policies.pretrained import smollm2_path

    pol = LIDPolicy.from_lm(smollm2_path(), layers, init=init, encoding=encoding, seed=seed)
    return pol, torch.optim.AdamW(pol.parameters(), lr=ARGS.lr, weight_decay=0.0)


def run_seed(seed: int, split, eval_seeds: dict, log) -> dict:
    from warmstart.learn.lid import bc_train, evaluate_splits, gather_round
    from warmstart.tasks import babyai as B

    res: dict = {"seed": seed}
    train = B.mission_seeds(LEVEL, split, "seen", ARGS.demos, start=seed * 100_000)
    demos = B.bot_demos(LEVEL, train, ARGS.max_steps)
    gather_seeds = B.mission_seeds(LEVEL, split, "seen", ARGS.rounds * 400, start=seed * 100_000 + 50_000)
    for name, init, enc in (("lm", "pretrained", "natural"), ("random", "random", "natural"),
                            ("lm-arbitrary", "pretrained", "arbitrary")):
        pol, opt = build(init, enc, ARGS.layers, seed)
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        bc = bc_train(pol, opt, demos, ARGS.bc_updates, ARGS.batch, g)
        ev = evaluate_splits(pol, LEVEL, eval_seeds, ARGS.max_steps)
        res[f"{name}/init"] = {**ev, "bc_loss": bc["loss"], "bc_accuracy": bc["accuracy"], "seconds": time.perf_counter() - t0}
        log(f"seed {seed} {name} init: {ev}")
        if name != "lm":
            continue
        for mode in ("hindsight", "self_imitation"):
            p2 = copy.deepcopy(pol)  # both modes start from the same BC policy and optimizer state
            o2 = torch.optim.AdamW(p2.parameters(), lr=ARGS.lr, weight_decay=0.0)
            o2.load_state_dict(opt.state_dict())
            data = list(demos)
            g2 = torch.Generator().manual_seed(seed + 1)  # same sampling stream for both modes
            used, rounds = 0, []
            t0 = time.perf_counter()
            for _ in range(ARGS.rounds):
                rr, n = gather_round(p2, LEVEL, gather_seeds[used:], ARGS.round_env_steps, mode, split, g2,
                                     ARGS.max_steps, batch=8)
                used += n
                data += rr.kept
                m = bc_train(p2, o2, data, ARGS.round_updates, ARGS.batch, g2)
                rounds.append({**rr.metrics, "dataset_steps": m["dataset_steps"]})
            ev = evaluate_splits(p2, LEVEL, eval_seeds, ARGS.max_steps)
            res[f"lm-{mode}/final"] = {**ev, "rounds": rounds, "seconds": time.perf_counter() - t0}
            log(f"seed {seed} {mode} final: {ev} rounds={rounds}")
    return res


def bot_ceiling(eval_seeds: dict) -> dict:
    from warmstart.tasks import babyai as B

    out = {}
    for name, ss in eval_seeds.items():
        demos = B.bot_demos(LEVEL, ss, ARGS.max_steps)  # failures are dropped
        out[f"success_rate_{name}"] = len(demos) / len(ss)
        out[f"mean_length_{name}"] = float(np.mean([len(d) for d in demos]))
    return out


def speed() -> None:
    """One measurement at a time, in this process, one thread."""
    from warmstart.learn.lid import bc_train, policy_actor
    from warmstart.tasks import babyai as B

    split = B.TaskSplit.from_names()
    seeds = B.mission_seeds(LEVEL, split, "seen", 200, start=0)
    rows = []
    t = time.perf_counter()
    demos = B.bot_demos(LEVEL, seeds, ARGS.max_steps)
    n = sum(len(d) for d in demos)
    rows.append(["env steps/s, BabyAIBot acting (incl. resets)", f"{n / (time.perf_counter() - t):.0f}"])
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    eps = B.rollout(LEVEL, seeds, lambda w: rng.integers(0, 3, len(w)), 4, ARGS.max_steps)
    n = sum(len(e) for e in eps)
    rows.append(["env steps/s, random actions (incl. encoding + resets)", f"{n / (time.perf_counter() - t):.0f}"])
    for layers in (1, 2, 4):
        pol, opt = build("pretrained", "natural", layers, 0)
        t = time.perf_counter()
        eps = B.rollout(LEVEL, seeds[:100], policy_actor(pol, greedy=False, generator=torch.Generator().manual_seed(0)), 4, ARGS.max_steps)
        n = sum(len(e) for e in eps)
        rows.append([f"env steps/s, LID policy k={layers} sampling (batch 64)", f"{n / (time.perf_counter() - t):.0f}"])
        m = bc_train(pol, opt, demos, 20, ARGS.batch, torch.Generator().manual_seed(0))
        rows.append([f"BC samples/s, LID policy k={layers} (batch {ARGS.batch})", f"{m['bc_samples_per_s']:.0f}"])
    print(table(["what", "rate"], rows))
    print(f"\n`{command_line()}` on {machine()}, torch threads {torch.get_num_threads()}")


def summarize(results: list[dict], ceiling: dict) -> None:
    keys = ["lm/init", "random/init", "lm-arbitrary/init", "lm-hindsight/final", "lm-self_imitation/final"]
    rows = []
    for k in keys:
        have = [r[k] for r in results if k in r]
        if not have:
            continue
        cell = []
        for s in ("seen", "unseen"):
            v = np.array([h[f"success_rate_{s}"] for h in have])
            cell.append(f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0:.3f}")
        lens = [np.mean([h[f"mean_length_{s}"] for h in have]) for s in ("seen", "unseen")]
        rows.append([k, len(have), *cell, f"{lens[0]:.1f} / {lens[1]:.1f}",
                     " ".join(f"{h['success_rate_unseen']:.3f}" for h in have)])
    rows.append(["BabyAIBot (ceiling)", "-", f"{ceiling['success_rate_seen']:.3f}", f"{ceiling['success_rate_unseen']:.3f}",
                 f"{ceiling['mean_length_seen']:.1f} / {ceiling['mean_length_unseen']:.1f}", "-"])
    print(table(["policy", "seeds", "success seen (± s.e.)", "success unseen (± s.e.)", "mean length seen / unseen", "unseen per seed"], rows))
    for a, b, what in (("lm/init", "random/init", "LM init - random init"), ("lm-hindsight/final", "lm-self_imitation/final", "hindsight - self-imitation"),
                       ("lm/init", "lm-arbitrary/init", "natural - arbitrary encoding")):
        pairs = [(r[a], r[b]) for r in results if a in r and b in r]
        for s in ("seen", "unseen"):
            d = np.array([x[f"success_rate_{s}"] - y[f"success_rate_{s}"] for x, y in pairs])
            if len(d):
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
                print(f"{what}, {s}: {d.mean():+.3f} (paired s.e. {se:.3f}, per seed {' '.join(f'{x:+.3f}' for x in d)})")


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--layers", type=int, default=1, help="decoder layers copied from SmolLM2 (both variants)")
    p.add_argument("--demos", type=int, default=300, help="bot demonstrations (training missions)")
    p.add_argument("--bc-updates", type=int, default=240)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-env-steps", type=int, default=500, help="env steps gathered per round")
    p.add_argument("--round-updates", type=int, default=60, help="BC updates after each round")
    p.add_argument("--eval", type=int, default=200, help="evaluation episodes per split")
    p.add_argument("--max-steps", type=int, default=20, help="episode cap (the level's own is 64)")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--report", nargs="+", default=None, metavar="JSON",
                   help="print the tables from result files of earlier runs (e.g. seeds run as separate processes)")
    p.add_argument("--out", default=str(Path(__file__).with_name("lid_babyai.json")))
    ARGS = p.parse_args()
    torch.set_num_threads(1)
    if ARGS.speed:
        return speed()
    if ARGS.report:
        files = [json.loads(Path(f).read_text()) for f in ARGS.report]
        results = sorted((r for f in files for r in f["results"]), key=lambda r: r["seed"])
        summarize(results, files[0]["ceiling"])
        print(f"\n`{command_line()}`; runs: " + "; ".join(f"seeds {[r['seed'] for r in f['results']]} with "
                                                         + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in f["args"].items()
                                                                    if k in ("layers", "demos", "bc_updates", "rounds", "round_env_steps", "round_updates", "eval", "max_steps", "lr"))
                                                         for f in files))
        return
    from warmstart.tasks import babyai as B

    split = B.TaskSplit.from_names()
    eval_seeds = {s: B.mission_seeds(LEVEL, split, s, ARGS.eval, start=10**7) for s in ("seen", "unseen")}
    ceiling = bot_ceiling(eval_seeds)
    out = Path(ARGS.out)
    results: list[dict] = []
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    for seed in ARGS.seeds:
        results.append(run_seed(seed, split, eval_seeds, log))
        out.write_text(json.dumps({"args": vars(ARGS), "ceiling": ceiling, "results": results}, indent=1))
    summarize(results, ceiling)
    print(f"\n`{command_line()}` on {machine()}, torch threads 1, total {time.perf_counter() - t0:.0f} s")


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
