"""Speed at equal learning: warmstart PPO vs Stable-Baselines3 PPO on CartPole-v1, side by side.

Both learners get the same hyper-parameters (those of recipes/ppo-cartpole.yaml: 8 envs x 32 steps,
20 epochs of one 256-sample minibatch, lr 1e-3 annealed linearly, gamma 0.98, GAE lambda 0.8,
clip 0.2, no entropy bonus, vf coef 0.5, grad-norm clip 0.5, Adam eps 1e-5, separate 64-64 tanh actor
and critic with orthogonal init), the same number of envs and env steps, one torch thread, and run
alternately in this one process (seed by seed, order swapped every seed, so drifting machine load
hits both). Reported: env steps per second of the training loop (warmstart: its PPO steps inside the
full engine run; SB3: ``learn()``), measured in process CPU time -- the machine this was written on
is shared, and CPU time is what does not move with other people's load (with one torch thread and an
idle machine it equals wall time) -- plus the wall-time ratio, and both final greedy eval returns
over 20 episodes.

Known differences that remain: SB3 does not clip the value loss the CleanRL way (its
``clip_range_vf`` clips the prediction instead of taking the max of two losses), so it runs without
value clipping; warmstart bootstraps truncated episodes from the final observation, SB3 does too.

    pip install stable-baselines3   # benchmark-only extra
    python benchmarks/ppo_vs_sb3.py [--seeds 1 2 3] [--steps 99840]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _vector_common import command_line, machine, run, table

N_ENVS, N_STEPS, EPOCHS, LR = 8, 32, 20, 1e-3


class _Clock:
    """CPU (process) time and wall time spent inside a function, accumulated."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def wrap(self, fn):
        def timed(*a, **kw):
            c, w = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.cpu += time.process_time() - c
                self.wall += time.perf_counter() - w

        return timed


def run_warmstart(seed: int, steps: int, out: Path) -> dict:
    """The full engine (run dir, metrics, checkpoints); only the PPO steps are timed."""
    from warmstart.learn.ppo import PPOPhase

    iters = steps // (N_ENVS * N_STEPS)
    clock, real = _Clock(), PPOPhase.step
    PPOPhase.step = clock.wrap(real)
    try:
        summary, _ = run("ppo-cartpole", [f"seed={seed}", f"phases.0.steps={iters}", "eval.n=20"], out / f"ws-{seed}")
    finally:
        PPOPhase.step = real
    n = iters * N_ENVS * N_STEPS
    return {"cpu_sps": n / clock.cpu, "wall_sps": n / clock.wall, "ret": summary["final"]["mean_return"]}


def run_sb3(seed: int, steps: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env("CartPole-v1", n_envs=N_ENVS, seed=seed)
    model = PPO(
        "MlpPolicy", env, n_steps=N_STEPS, batch_size=N_ENVS * N_STEPS, n_epochs=EPOCHS,
        learning_rate=lambda frac: LR * frac, gamma=0.98, gae_lambda=0.8, clip_range=0.2, ent_coef=0.0,
        vf_coef=0.5, max_grad_norm=0.5, normalize_advantage=True, seed=seed, device="cpu", verbose=0,
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh,
                           ortho_init=True, optimizer_kwargs=dict(eps=1e-5)),
    )
    clock = _Clock()
    clock.wrap(model.learn)(total_timesteps=steps)
    mean, _ = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=20, deterministic=True)
    return {"cpu_sps": steps / clock.cpu, "wall_sps": steps / clock.wall, "ret": float(mean)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=99_840, help="env steps per run (a multiple of 256)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ppo-vs-sb3"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, ratios, wall_ratios, ws_ret, sb_ret = [], [], [], [], []
    for k, seed in enumerate(args.seeds):
        order = ["ws", "sb3"] if k % 2 == 0 else ["sb3", "ws"]
        res = {}
        for who in order:
            res[who] = run_warmstart(seed, args.steps, args.out) if who == "ws" else run_sb3(seed, args.steps)
        ws, sb = res["ws"], res["sb3"]
        ratios.append(ws["cpu_sps"] / sb["cpu_sps"])
        wall_ratios.append(ws["wall_sps"] / sb["wall_sps"])
        ws_ret.append(ws["ret"])
        sb_ret.append(sb["ret"])
        rows.append([seed, args.steps, f"{ws['cpu_sps']:.0f}", f"{sb['cpu_sps']:.0f}", f"{ratios[-1]:.2f}",
                     f"{wall_ratios[-1]:.2f}", f"{ws['ret']:.1f}", f"{sb['ret']:.1f}"])
    rows.append(["mean", "", "", "", f"{np.mean(ratios):.2f}", f"{np.mean(wall_ratios):.2f}", f"{np.mean(ws_ret):.1f}",
                 f"{np.mean(sb_ret):.1f}"])
    print(table(["seed", "env steps", "warmstart env-steps/CPU-s", "SB3 env-steps/CPU-s", "ratio (CPU)",
                 "ratio (wall)", "warmstart eval return", "SB3 eval return"], rows))
    import stable_baselines3

    print(f"\nratio target >= 1.5; SB3 {stable_baselines3.__version__}, torch {torch.__version__}, 1 thread")
    print(f"machine: {machine()}")
    print(f"command: {command_line()}")


if __name__ == "__main__":
    main()
