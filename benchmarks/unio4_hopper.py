"""Uni-O4 on MuJoCo Hopper-v5: OPE-gated multi-step offline PPO vs one-step vs BC (offline score),
then online fine-tuning from the Uni-O4 policy vs PPO from scratch at the same online env steps.

Every seed uses the same dataset (made once by :mod:`warmstart.learn.offline_data`, cached) and
shares, within the seed, the stages the three offline methods have in common (IQL critics, the
Monte-Carlo V, the BC ensemble, the dynamics ensemble) -- exactly what each recipe computes on its
own. Each method's policy is chosen the same way (top 3 members by OPE, then the best of 5 real
episodes each) and scored greedily on 10 held-out episodes, as D4RL's normalised score.

    cd benchmarks && python unio4_hopper.py --seeds 0 1 2 --data-dir ../.cache/minari --out unio4_hopper.json
    cd benchmarks && python unio4_hopper.py --seeds 0 1 2 --iql-steps 12000 --iql-polyak 0.02 --online-iters 0 ...   # the recipes' critic
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from types import SimpleNamespace

import numpy as np
import torch

from _vector_common import command_line, machine, table  # noqa: E402  (adds the repo to sys.path)

from warmstart.config import EvalConfig
from warmstart.engine.run import seed_everything, step_seed
from warmstart.learn.dynamics import DynamicsConfig, DynamicsEnsemble, fit_dynamics
from warmstart.learn.iql import IQLConfig, IQLCritics, fit_value, mc_returns
from warmstart.learn.offline_data import DataGenConfig, generate
from warmstart.learn.ppo import PPOConfig, PPOPhase
from warmstart.learn.unio4 import OfflinePPO, bc_step, select_member, set_obs_stats, to_tensors
from warmstart.policies.ensemble import GaussianEnsemble
from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig
from warmstart.tasks.gym import GymTask, GymTaskConfig

EVAL = EvalConfig(n=10, seed=10_000)


def score(policy, task, ds) -> tuple[float, float]:
    ev = task.evaluate(policy, EVAL)
    return ev["mean_return"], float(ds.normalized_score(ev["mean_return"]))


def online(policy, task, ds, cfg: PPOConfig, seed: int, eval_at: list[int]) -> list[dict]:
    """Run warmstart's PPO phase for ``cfg.steps`` iterations; score at the listed iterations."""
    ctx = SimpleNamespace(policy=policy, task=task, seed=seed)
    phase = PPOPhase(cfg, ctx)
    phase.on_start(0)
    curve, t0 = [], time.perf_counter()
    env_time = 0.0
    for k in range(cfg.steps):
        seed_everything(step_seed(seed, k))
        m = phase.step(k)
        env_time += m["time_rollout_s"] + m["time_update_s"]
        if k + 1 in eval_at:
            ret, norm = score(policy, task, ds)
            curve.append({"iteration": k + 1, "env_steps": m["env_steps"], "return": ret, "normalized": norm,
                          "train_sps": m["env_steps"] / env_time})
    phase.on_end()
    curve[-1]["wall_s"] = time.perf_counter() - t0
    return curve


def run_seed(seed: int, args, ds, task) -> dict:
    out: dict = {"seed": seed}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pcfg = MLPPolicyConfig(kind="mlp", hidden=[64, 64], normalize_obs=True)
    policy = MLPPolicy.from_spaces(task.observation_space, task.action_space, pcfg)
    set_obs_stats(policy, ds)
    data = to_tensors(ds, policy)
    t = time.perf_counter()
    critics = IQLCritics(ds.obs_dim, ds.act_dim, IQLConfig(hidden=(128, 128), polyak=args.iql_polyak))
    for _ in range(args.iql_steps):
        critics.update(*data.batch(256, gen))
    out["iql_steps_per_s"] = args.iql_steps / (time.perf_counter() - t)
    ret = torch.from_numpy(mc_returns(ds.rewards, ds.episode_index, 0.99)) * args.reward_scale
    fit_value(policy.critic, data.obs, ret, args.mc_steps, 256, gen, torch.optim.Adam(policy.critic.parameters(), lr=1e-3))
    ens = GaussianEnsemble(args.members, ds.obs_dim, ds.act_dim, [64, 64])
    opt = torch.optim.Adam(ens.parameters(), lr=1e-3)
    t = time.perf_counter()
    for _ in range(args.bc_steps):
        bc_step(ens, opt, data, 256, args.alpha, gen)
    out["bc_steps_per_s"] = args.bc_steps / (time.perf_counter() - t)
    dyn = DynamicsEnsemble(ds.obs_dim, ds.act_dim, DynamicsConfig(hidden=(128, 128)))
    out["dynamics"] = fit_dynamics(dyn, data.obs, data.act, data.next_obs, data.rew, args.dyn_steps, gen)
    print(f"  seed {seed}: critics, BC and dynamics trained", flush=True)

    results = {}
    for method in ("bc", "onestep", "unio4"):
        actor = copy.deepcopy(ens)
        ppo = OfflinePPO(actor, critics, dyn, data, total_updates=args.ppo_steps, gated=method == "unio4", seed=seed)
        t = time.perf_counter()
        if method != "bc":
            for _ in range(args.ppo_steps):
                ppo.step(gen)
        sps = args.ppo_steps / (time.perf_counter() - t) if method != "bc" else None
        final = ppo.result()
        scores = ppo.ope(final)
        e, sel = select_member(final, scores, policy, task, top_k=3, episodes=5, seed=20_000 + seed)
        pol = copy.deepcopy(policy)
        final.export_member(e, pol)
        r, n = score(pol, task, ds)
        results[method] = {"return": r, "normalized": n, "ope": scores.tolist(), "accepted": ppo.accepted.tolist(),
                           "offline_updates_per_s": sps, **sel}
        print(f"  seed {seed} {method}: return {r:.1f} (normalised {n:.1f}), OPE {[round(x, 3) for x in scores.tolist()]}", flush=True)
        if method == "unio4":
            online_policy = pol
    out["offline"] = results
    if args.online_iters == 0:
        return out

    ft = PPOConfig(kind="ppo", steps=args.online_iters, num_envs=4, num_steps=512, lr=args.online_actor_lr,
                   critic_lr=2e-4, clip_coef=0.05, clip_vloss=False, ent_coef=0.01, num_minibatches=16,
                   update_epochs=10, gamma=0.99, gae_lambda=0.95, reward_scale=args.reward_scale,
                   freeze_obs_norm=True, anneal_lr=True, env_seed=30_000 + seed)
    out["online_unio4"] = online(online_policy, task, ds, ft, seed, args.eval_at)
    print(f"  seed {seed} online from Uni-O4: {[round(c['normalized'], 1) for c in out['online_unio4']]}", flush=True)
    torch.manual_seed(seed)
    scratch = MLPPolicy.from_spaces(task.observation_space, task.action_space, pcfg)
    sc = PPOConfig(kind="ppo", steps=args.online_iters, num_envs=4, num_steps=512, lr=3e-4, clip_coef=0.2,
                   ent_coef=0.0, num_minibatches=32, update_epochs=10, normalize_reward=True, env_seed=30_000 + seed)
    out["online_scratch"] = online(scratch, task, ds, sc, seed, args.eval_at)
    print(f"  seed {seed} PPO from scratch: {[round(c['normalized'], 1) for c in out['online_scratch']]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dataset", default="medium", choices=["medium", "medium-replay", "medium-expert"])
    ap.add_argument("--data-dir", default=".cache/minari")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--iql-steps", type=int, default=4000)
    ap.add_argument("--iql-polyak", type=float, default=0.005, help="IQL target-network rate (0.005 as IQL)")
    ap.add_argument("--mc-steps", type=int, default=2000)
    ap.add_argument("--bc-steps", type=int, default=2000)
    ap.add_argument("--dyn-steps", type=int, default=2000)
    ap.add_argument("--ppo-steps", type=int, default=1000)
    ap.add_argument("--online-iters", type=int, default=20, help="online PPO iterations of 2048 env steps (0: offline only)")
    ap.add_argument("--online-actor-lr", type=float, default=2e-5)
    ap.add_argument("--eval-at", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    ap.add_argument("--reward-scale", type=float, default=0.01)
    ap.add_argument("--data-config", default="{}", help="JSON overrides of DataGenConfig (e.g. a tiny one to try the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = generate(DataGenConfig(**json.loads(args.data_config)), args.data_dir)[args.dataset]
    task = GymTask(GymTaskConfig(kind="gym", env_id="Hopper-v5"))
    rows = [run_seed(s, args, ds, task) for s in args.seeds]
    print(f"\n{command_line()}\n{machine()}; dataset {ds.dataset_id}: {len(ds)} steps, "
          f"mean episode return {ds.episode_returns().mean():.1f} (normalised {ds.normalized_score(ds.episode_returns().mean()):.1f})\n")
    def ms(xs):
        return f"{np.mean(xs):.1f} ± {np.std(xs) / max(np.sqrt(len(xs) - 1), 1):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"
    head = ["method"] + [f"seed {r['seed']}" for r in rows] + ["mean ± s.e."]
    body = []
    for m in ("bc", "onestep", "unio4"):
        xs = [r["offline"][m]["normalized"] for r in rows]
        body.append([f"offline {m}"] + [f"{x:.1f}" for x in xs] + [ms(xs)])
    for key, name in (("online_unio4", "Uni-O4 online"), ("online_scratch", "PPO scratch")):
        for i, it in enumerate(args.eval_at if args.online_iters else []):
            xs = [r[key][i]["normalized"] for r in rows]
            steps = rows[0][key][i]["env_steps"]
            body.append([f"{name} @{steps}"] + [f"{x:.1f}" for x in xs] + [ms(xs)])
    print(table(head, body))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command_line(), "machine": machine(), "args": vars(args), "seeds": rows}, f, indent=1)


if __name__ == "__main__":
    main()
