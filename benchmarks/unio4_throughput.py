"""Throughput of Uni-O4's pieces against d3rlpy's, side by side in one process on one thread.

Offline gradient steps/s (batch 256, critics 2 x 128, actors 2 x 64, the same Minari Hopper data):
warmstart's IQL critic update (2 Q + V), its ensemble-BC step (4 members) and its offline PPO step
(4 members) vs d3rlpy's IQL update (2 Q + V + actor) and CQL update. Online env-steps/s: warmstart's
online PPO (rollouts of 4 x 512 steps, 10 epochs of 16 minibatches) vs d3rlpy's ``fit_online``
(one gradient step per env step, its default). Each is timed once, one after the other, the two
libraries alternating, so background load hits both alike; the ratios are what to read.

    python benchmarks/unio4_throughput.py --steps 300 --online-steps 4096
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from types import SimpleNamespace

import torch

from _vector_common import command_line, machine, table  # noqa: E402  (adds the repo to sys.path)
from unio4_vs_d3rlpy import fit, fit_online, make_algo, to_mdp

from warmstart.learn.dynamics import DynamicsConfig, DynamicsEnsemble
from warmstart.learn.iql import IQLConfig, IQLCritics
from warmstart.learn.offline_data import DataGenConfig, generate
from warmstart.learn.ppo import PPOConfig, PPOPhase
from warmstart.learn.unio4 import OfflinePPO, bc_step, set_obs_stats, to_tensors
from warmstart.policies.ensemble import GaussianEnsemble
from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig
from warmstart.tasks.gym import GymTask, GymTaskConfig


def timed(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="offline gradient steps timed per learner")
    ap.add_argument("--online-steps", type=int, default=4096, help="online env steps timed per learner")
    ap.add_argument("--data-dir", default=".cache/minari")
    ap.add_argument("--data-config", default="{}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ds = generate(DataGenConfig(**json.loads(args.data_config)), args.data_dir, log=lambda m: None)["medium"]
    task = GymTask(GymTaskConfig(kind="gym", env_id="Hopper-v5"))
    pol = MLPPolicy.from_spaces(task.observation_space, task.action_space, MLPPolicyConfig(kind="mlp", normalize_obs=True))
    set_obs_stats(pol, ds)
    data = to_tensors(ds, pol)
    gen = torch.Generator().manual_seed(0)
    mdp = to_mdp(ds)
    speed = {}

    crit = IQLCritics(ds.obs_dim, ds.act_dim, IQLConfig(hidden=(128, 128)))
    speed["warmstart IQL critics (2Q+V)"] = timed(lambda: crit.update(*data.batch(256, gen)), args.steps)
    speed["d3rlpy IQL (2Q+V+actor)"] = fit(make_algo("iql", 0), mdp, args.steps)
    ens = GaussianEnsemble(4, ds.obs_dim, ds.act_dim, [64, 64])
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    speed["warmstart ensemble BC (4 members)"] = timed(lambda: bc_step(ens, opt, data, 256, 0.1, gen), args.steps)
    dyn = DynamicsEnsemble(ds.obs_dim, ds.act_dim, DynamicsConfig(hidden=(128, 128)))
    ppo = OfflinePPO(ens, crit, dyn, data, total_updates=args.steps, gated=False)
    speed["warmstart offline PPO (4 members)"] = timed(lambda: ppo.step(gen), args.steps)
    speed["d3rlpy CQL (2Q+actor, 10 action samples)"] = fit(make_algo("cql", 0), mdp, args.steps)

    iters = max(1, args.online_steps // 2048)
    cfg = PPOConfig(kind="ppo", steps=iters, num_envs=4, num_steps=512, lr=2e-5, critic_lr=2e-4, clip_coef=0.05,
                    clip_vloss=False, num_minibatches=16, update_epochs=10, reward_scale=0.01, freeze_obs_norm=True)
    phase = PPOPhase(cfg, SimpleNamespace(policy=pol, task=task, seed=0))
    phase.on_start(0)
    t = time.perf_counter()
    for k in range(iters):
        phase.step(k, k)
    speed["warmstart online PPO env-steps"] = iters * 2048 / (time.perf_counter() - t)
    phase.on_end()
    algo = make_algo("iql", 0)
    fit(algo, mdp, 10)
    speed["d3rlpy IQL fit_online env-steps"] = fit_online(algo, ds, mdp, args.online_steps)

    ratio = {
        "IQL critics vs d3rlpy IQL": speed["warmstart IQL critics (2Q+V)"] / speed["d3rlpy IQL (2Q+V+actor)"],
        "offline PPO (4 members) vs d3rlpy IQL": speed["warmstart offline PPO (4 members)"] / speed["d3rlpy IQL (2Q+V+actor)"],
        "offline PPO (4 members) vs d3rlpy CQL": speed["warmstart offline PPO (4 members)"] / speed["d3rlpy CQL (2Q+actor, 10 action samples)"],
        "online PPO vs d3rlpy fit_online": speed["warmstart online PPO env-steps"] / speed["d3rlpy IQL fit_online env-steps"],
    }
    print(f"\n{command_line()}\n{machine()}\n")
    print(table(["learner", "per s"], [[k, f"{v:.1f}"] for k, v in speed.items()]))
    print()
    print(table(["ratio", "x"], [[k, f"{v:.2f}"] for k, v in ratio.items()]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command_line(), "machine": machine(), "speed": speed, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
