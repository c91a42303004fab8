"""d3rlpy's IQL and CQL on the same Minari Hopper data as Uni-O4, and throughput side by side.

Same dataset (loaded from the Minari files with warmstart's loader and handed to d3rlpy as an
``MDPDataset`` with terminals and timeouts), same observation standardisation, critics of the same
size (2 x 128), the same evaluation (10 greedy episodes, seeds 10000+). The offline budget is a
number of gradient steps, far below the papers' 1M (a 2-core CPU shared with other work).

Throughput (one process, one thread, timed one after the other in this script):
* offline gradient steps/s: warmstart's IQL critic update (2 Q + V) and its offline PPO step (4
  members) vs d3rlpy's IQL update (2 Q + V + actor) and CQL update;
* online env-steps/s: warmstart's online PPO (2048-step rollouts + 10 epochs) vs d3rlpy's
  ``fit_online`` fine-tuning of its IQL (one gradient step per env step, its default).

    pip install --no-deps d3rlpy==2.8.1 structlog colorama dataclasses-json marshmallow typing-inspect \\
        mypy-extensions gym gym-notices   # d3rlpy pins gymnasium==1.0.0; it runs with 1.4 here
    python benchmarks/unio4_vs_d3rlpy.py --seeds 0 1 2 --out benchmarks/unio4_vs_d3rlpy.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

from _vector_common import command_line, machine, table  # noqa: E402  (adds the repo to sys.path)

from warmstart.config import EvalConfig
from warmstart.learn.offline_data import DataGenConfig, generate
from warmstart.tasks.gym import GymTask, GymTaskConfig

EVAL = EvalConfig(n=10, seed=10_000)


class D3Policy:
    """Adapter: a d3rlpy algorithm behind the ``predict`` that warmstart's evaluation calls."""

    training = False

    def __init__(self, algo):
        self.algo = algo

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def predict(self, obs, deterministic=True, generator=None):
        return self.algo.predict(np.asarray(obs, dtype=np.float32))


def to_mdp(ds):
    import d3rlpy

    return d3rlpy.dataset.MDPDataset(
        observations=ds.observations, actions=ds.actions, rewards=ds.rewards,
        terminals=ds.terminals, timeouts=ds.timeouts,
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )


def make_algo(name: str, seed: int):
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory

    d3rlpy.seed(seed)
    critic = VectorEncoderFactory(hidden_units=[128, 128])
    actor = VectorEncoderFactory(hidden_units=[64, 64])
    scaler = d3rlpy.preprocessing.StandardObservationScaler()
    if name == "iql":
        cfg = d3rlpy.algos.IQLConfig(actor_encoder_factory=actor, critic_encoder_factory=critic,
                                     value_encoder_factory=critic, observation_scaler=scaler, expectile=0.7)
    else:
        cfg = d3rlpy.algos.CQLConfig(actor_encoder_factory=actor, critic_encoder_factory=critic, observation_scaler=scaler)
    return cfg.create(device=None)


def fit(algo, mdp, steps: int) -> float:
    from d3rlpy.logging import NoopAdapterFactory

    t = time.perf_counter()
    algo.fit(mdp, n_steps=steps, n_steps_per_epoch=steps, logger_adapter=NoopAdapterFactory(), show_progress=False,
             save_interval=10**9)
    return steps / (time.perf_counter() - t)


def fit_online(algo, ds, mdp, steps: int) -> float:
    """d3rlpy's online fine-tuning from the offline data's replay buffer; returns env steps/s."""
    import d3rlpy
    import gymnasium as gym
    from d3rlpy.logging import NoopAdapterFactory

    env = gym.make("Hopper-v5")
    buf = d3rlpy.dataset.create_fifo_replay_buffer(limit=len(ds) + steps, episodes=mdp.episodes, env=env)
    t = time.perf_counter()
    algo.fit_online(env, buf, n_steps=steps, n_steps_per_epoch=steps, logger_adapter=NoopAdapterFactory(),
                    show_progress=False, save_interval=10**9)
    return steps / (time.perf_counter() - t)


def ours_offline_throughput(ds, steps: int) -> dict[str, float]:
    from warmstart.learn.dynamics import DynamicsConfig, DynamicsEnsemble
    from warmstart.learn.iql import IQLConfig, IQLCritics
    from warmstart.learn.unio4 import OfflinePPO, set_obs_stats, to_tensors
    from warmstart.policies.ensemble import GaussianEnsemble
    from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig

    task = GymTask(GymTaskConfig(kind="gym", env_id="Hopper-v5"))
    pol = MLPPolicy.from_spaces(task.observation_space, task.action_space, MLPPolicyConfig(kind="mlp", normalize_obs=True))
    set_obs_stats(pol, ds)
    data = to_tensors(ds, pol)
    gen = torch.Generator().manual_seed(0)
    crit = IQLCritics(ds.obs_dim, ds.act_dim, IQLConfig(hidden=(128, 128)))
    t = time.perf_counter()
    for _ in range(steps):
        crit.update(*data.batch(256, gen))
    iql = steps / (time.perf_counter() - t)
    ens = GaussianEnsemble(4, ds.obs_dim, ds.act_dim, [64, 64])
    dyn = DynamicsEnsemble(ds.obs_dim, ds.act_dim, DynamicsConfig(hidden=(128, 128)))
    ppo = OfflinePPO(ens, crit, dyn, data, total_updates=steps, gated=False)
    t = time.perf_counter()
    for _ in range(steps):
        ppo.step(gen)
    return {"iql_critics": iql, "offline_ppo_4_members": steps / (time.perf_counter() - t)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dataset", default="medium")
    ap.add_argument("--data-dir", default=".cache/minari")
    ap.add_argument("--iql-steps", type=int, default=4000, help="offline gradient steps of d3rlpy's IQL")
    ap.add_argument("--cql-steps", type=int, default=2000, help="offline gradient steps of d3rlpy's CQL (about 4x IQL's cost each)")
    ap.add_argument("--online-steps", type=int, default=2000, help="env steps of d3rlpy's IQL fit_online")
    ap.add_argument("--throughput-steps", type=int, default=500)
    ap.add_argument("--data-config", default="{}", help="JSON overrides of DataGenConfig (e.g. a tiny one to try the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # d3rlpy's per-epoch logs
    ds = generate(DataGenConfig(**json.loads(args.data_config)), args.data_dir)[args.dataset]
    task = GymTask(GymTaskConfig(kind="gym", env_id="Hopper-v5"))
    mdp = to_mdp(ds)
    rows, speed = [], {}
    for seed in args.seeds:
        row = {"seed": seed}
        for name in ("iql", "cql"):
            algo = make_algo(name, seed)
            steps = args.iql_steps if name == "iql" else args.cql_steps
            sps = fit(algo, mdp, steps)
            ev = task.evaluate(D3Policy(algo), EVAL)
            row[name] = {"return": ev["mean_return"], "normalized": float(ds.normalized_score(ev["mean_return"])), "steps_per_s": sps}
            print(f"  seed {seed} d3rlpy {name}: return {ev['mean_return']:.1f} (normalised {row[name]['normalized']:.1f}), {sps:.1f} steps/s", flush=True)
            if name == "iql" and seed == args.seeds[0] and args.online_steps:
                speed["d3rlpy_iql_fit_online_env_steps_per_s"] = fit_online(algo, ds, mdp, args.online_steps)
                ev = task.evaluate(D3Policy(algo), EVAL)
                row["iql_online"] = {"env_steps": args.online_steps, "return": ev["mean_return"],
                                     "normalized": float(ds.normalized_score(ev["mean_return"]))}
                print(f"  d3rlpy iql after {args.online_steps} online steps: {row['iql_online']['normalized']:.1f}", flush=True)
        rows.append(row)
    # side-by-side offline throughput at equal step counts, same process
    ours = ours_offline_throughput(ds, args.throughput_steps)
    d3 = {}
    for name in ("iql", "cql"):
        d3[name] = fit(make_algo(name, 0), mdp, args.throughput_steps)
    speed.update({f"warmstart_{k}_steps_per_s": v for k, v in ours.items()})
    speed.update({f"d3rlpy_{k}_steps_per_s": v for k, v in d3.items()})
    print(f"\n{command_line()}\n{machine()}\n")
    def ms(xs):
        return f"{np.mean(xs):.1f} ± {np.std(xs) / max(np.sqrt(len(xs) - 1), 1):.1f}"
    body = [[f"d3rlpy {n} ({args.iql_steps if n == 'iql' else args.cql_steps} steps)"] + [f"{r[n]['normalized']:.1f}" for r in rows] + [ms([r[n]['normalized'] for r in rows])]
            for n in ("iql", "cql")]
    print(table(["method"] + [f"seed {r['seed']}" for r in rows] + ["mean ± s.e."], body))
    print()
    print(table(["throughput", "per s"], [[k, f"{v:.1f}"] for k, v in speed.items()]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command_line(), "machine": machine(), "args": vars(args), "seeds": rows, "speed": speed}, f, indent=1)


if __name__ == "__main__":
    main()
