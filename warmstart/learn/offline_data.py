"""Offline datasets made the way D4RL made its MuJoCo ones, with warmstart's own PPO, as Minari files.

One PPO run (:mod:`warmstart.learn.ppo`'s ``collect`` / ``advantages`` / ``update``, called as they
are) trains a Gaussian MLP policy on the env and yields three datasets:

* ``medium``: the policy after ``medium_iters`` PPO iterations ("part-way"), sampled (not greedy) for
  ``record_steps`` env steps;
* ``medium-replay``: every transition PPO itself collected up to that point (its replay);
* ``medium-expert``: ``medium`` plus as many steps of the policy at the end of the run
  (``expert_iters``), sampled the same way. At a CPU budget this "expert" is the best PPO policy we
  can afford, not D4RL's SAC expert; its greedy return is stored beside the data.

Everything is seeded from ``seed`` (one thread: the same numbers on every CPU run), and the result
is cached under ``data_dir/<hash of the settings>/``: a generation whose settings hash matches the one
stored in ``warmstart.json`` beside the data is loaded instead of being recomputed. ``ref_min_score`` is the mean return of a uniform random
policy measured on the env; ``ref_max_score`` is D4RL's Hopper expert reference (3234.3), so
normalised scores read like D4RL's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from warmstart.config import Strict

from warmstart.errors import DataError
from warmstart.tasks.offline import HOPPER_EXPERT_REFERENCE, Episode, OfflineDataset, load_minari, write_minari

KINDS = ("medium", "medium-replay", "medium-expert")


class DataGenConfig(Strict):
    """How the datasets are made (every field enters the cache key)."""

    env_id: str = Field("Hopper-v5", description="Gymnasium id of the env the data is recorded on")
    seed: int = Field(0, description="seed of the PPO run and of the recording (the data's seed, not the learner's)")
    hidden: list[int] = Field([64, 64], description="hidden sizes of the PPO policy that makes the data")
    num_envs: int = Field(4, ge=1, description="parallel envs of the PPO run and of the recording")
    num_steps: int = Field(512, ge=1, description="steps per env per PPO iteration (2048 env steps an iteration, as CleanRL's MuJoCo PPO)")
    medium_iters: int = Field(60, ge=1, description="PPO iterations before the 'medium' policy is taken")
    expert_iters: int = Field(150, ge=1, description="PPO iterations in all; the policy at the end is the 'expert'")
    record_steps: int = Field(50_000, ge=1, description="env steps recorded with each of the medium and expert policies")
    lr: float = Field(3e-4, gt=0, description="PPO learning rate (annealed to 0 over expert_iters)")
    update_epochs: int = Field(10, ge=1, description="PPO epochs per iteration")
    num_minibatches: int = Field(32, ge=1, description="PPO minibatches per epoch")
    ent_coef: float = Field(0.0, ge=0, description="PPO entropy bonus")
    random_episodes: int = Field(20, ge=1, description="episodes of a uniform random policy for ref_min_score")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:12]

    def dataset_id(self, kind: str) -> str:
        env = self.env_id.split("-")[0].lower()
        return f"warmstart-{env}/{kind}-s{self.seed}-v0"


class RecordingVecEnv:
    """Wraps a :class:`~warmstart.tasks.gym.VecEnv` and records every transition per env, so a
    learner that steps it (PPO's ``collect``) leaves its replay behind as whole episodes."""

    def __init__(self, venv, first_obs: np.ndarray, action_low: np.ndarray, action_high: np.ndarray):
        self.venv = venv
        self.num_envs = venv.num_envs
        self.low, self.high = action_low, action_high
        self.last_obs = first_obs.copy()  # (N, D) raw
        self.open = [self._new(first_obs[i]) for i in range(self.num_envs)]
        self.episodes: list[Episode] = []

    @staticmethod
    def _new(obs0: np.ndarray) -> dict:
        return {"obs": [obs0.copy()], "act": [], "rew": [], "term": [], "trunc": []}

    def step(self, actions: np.ndarray):
        a = np.clip(actions, self.low, self.high)  # what the env executes (VecEnv clips the same way)
        obs, rew, term, trunc, info = self.venv.step(a)
        for i in range(self.num_envs):
            ep = self.open[i]
            ended = bool(term[i] or trunc[i])
            ep["act"].append(a[i].astype(np.float32))
            ep["rew"].append(float(rew[i]))
            ep["term"].append(bool(term[i]))
            ep["trunc"].append(bool(trunc[i]))
            ep["obs"].append((info["final_obs"][i] if ended else obs[i]).copy())
            if ended:
                self.episodes.append(self._close(ep))
                self.open[i] = self._new(obs[i])
        self.last_obs = obs
        return obs, rew, term, trunc, info

    @staticmethod
    def _close(ep: dict, cut: bool = False) -> Episode:
        trunc = np.asarray(ep["trunc"], dtype=np.float32)
        if cut:
            trunc[-1] = 1.0  # recording stopped mid-episode: a time-limit end for the learner
        return Episode(
            observations=np.asarray(ep["obs"], dtype=np.float32),
            actions=np.asarray(ep["act"], dtype=np.float32),
            rewards=np.asarray(ep["rew"], dtype=np.float32),
            terminations=np.asarray(ep["term"], dtype=np.float32),
            truncations=trunc,
        )

    def take(self) -> list[Episode]:
        """All finished episodes plus the open ones cut here; recording starts afresh."""
        out = self.episodes + [self._close(ep, cut=True) for ep in self.open if ep["act"]]
        self.episodes = []
        self.open = [self._new(self.last_obs[i]) for i in range(self.num_envs)]
        return out

    def close(self) -> None:
        self.venv.close()


def _make_task(env_id: str):
    from warmstart.tasks.gym import GymTask, GymTaskConfig

    return GymTask(GymTaskConfig(kind="gym", env_id=env_id))


def random_return(env_id: str, episodes: int, seed: int) -> float:
    """Mean return of a uniform random policy (the ``ref_min_score`` of a normalised score)."""
    import gymnasium as gym

    env = gym.make(env_id, disable_env_checker=True)
    env.action_space.seed(seed)
    total = []
    for k in range(episodes):
        env.reset(seed=seed + k)
        ret, done = 0.0, False
        while not done:
            _, r, te, tr, _ = env.step(env.action_space.sample())
            ret += float(r)
            done = te or tr
        total.append(ret)
    env.close()
    return float(np.mean(total))


def record(policy, task, steps: int, seed: int, num_envs: int) -> list[Episode]:
    """Sample ``policy`` (stochastic actions) on ``num_envs`` envs for ``steps`` env steps in all."""
    venv, obs = task.make_envs(num_envs, seed=seed)
    space = task.action_space
    rec = RecordingVecEnv(venv, obs, space.low, space.high)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(-(-steps // num_envs)):
        obs, *_ = rec.step(policy.predict(obs, deterministic=False, generator=gen))
    eps = rec.take()
    rec.close()
    return eps


def generate(cfg: DataGenConfig, data_dir: str | Path, log=print) -> dict[str, OfflineDataset]:
    """Make (or load from the cache) the three datasets of ``cfg``. They live under
    ``data_dir/<generation key>/`` -- a Minari root of their own, so datasets made with other
    settings never overwrite them."""
    key = cfg.key()
    root = Path(data_dir) / key
    cached = {}
    for kind in KINDS:
        try:
            ds = load_minari(root, cfg.dataset_id(kind))
        except DataError:
            break
        if ds.info["warmstart"].get("key") != key:
            break
        cached[kind] = ds
    if len(cached) == len(KINDS):
        log(f"datasets for generation key {key} found under {root}: loading them")
        return cached
    return _generate(cfg, root, key, log)


def _generate(cfg: DataGenConfig, root: Path, key: str, log) -> dict[str, OfflineDataset]:
    from warmstart.learn.ppo import PPOConfig, RewardScaler, advantages, collect, update
    from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    task = _make_task(cfg.env_id)
    policy = MLPPolicy.from_spaces(
        task.observation_space, task.action_space, MLPPolicyConfig(kind="mlp", hidden=cfg.hidden, normalize_obs=True)
    )
    ppo = PPOConfig(
        kind="ppo", steps=cfg.expert_iters, num_envs=cfg.num_envs, num_steps=cfg.num_steps, lr=cfg.lr,
        update_epochs=cfg.update_epochs, num_minibatches=cfg.num_minibatches, ent_coef=cfg.ent_coef,
        normalize_reward=True,
    )
    venv, first = task.make_envs(cfg.num_envs, seed=cfg.seed)
    rec = RecordingVecEnv(venv, first, task.action_space.low, task.action_space.high)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=ppo.adam_eps)
    scaler = RewardScaler(cfg.num_envs, ppo.gamma, ppo.reward_clip)
    finished: deque = deque(maxlen=20)
    next_obs = torch.from_numpy(first)
    replay: list[Episode] = []
    medium_policy = None
    for it in range(cfg.expert_iters):
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * (1.0 - it / cfg.expert_iters)
        roll, next_obs = collect(policy, rec, next_obs, ppo, scaler, finished)
        adv, ret = advantages(roll, ppo)
        update(policy, optimizer, roll, adv, ret, ppo)
        if it + 1 == cfg.medium_iters:
            medium_policy = copy.deepcopy(policy)
            replay = rec.take()
        if (it + 1) % 10 == 0:
            log(f"  PPO iteration {it + 1}/{cfg.expert_iters}: return (last 20 episodes) {np.mean(finished):.1f}, {time.time() - t0:.0f} s")
    rec.close()
    if medium_policy is None:
        raise DataError(f"medium_iters ({cfg.medium_iters}) must be at most expert_iters ({cfg.expert_iters})")
    ref_min = random_return(cfg.env_id, cfg.random_episodes, cfg.seed)
    medium = record(medium_policy, task, cfg.record_steps, cfg.seed + 1000, cfg.num_envs)
    expert = record(policy, task, cfg.record_steps, cfg.seed + 2000, cfg.num_envs)
    meta = {"key": key, "config": cfg.model_dump(), "generation_s": round(time.time() - t0, 1)}
    out = {}
    parts = {"medium": medium, "medium-replay": replay, "medium-expert": medium + expert}
    for kind, eps in parts.items():
        ret = np.array([e.rewards.sum() for e in eps])
        m = dict(meta, episodes=len(eps), steps=int(sum(len(e) for e in eps)), mean_episode_return=float(ret.mean()))
        write_minari(
            root, cfg.dataset_id(kind), eps, cfg.env_id, ref_min, HOPPER_EXPERT_REFERENCE,
            algorithm_name=f"warmstart PPO ({kind})",
            description=f"{kind} data from warmstart's PPO on {cfg.env_id} (generation key {key})",
            extra_metadata=m,
        )
        out[kind] = load_minari(root, cfg.dataset_id(kind))
        log(f"  wrote {cfg.dataset_id(kind)}: {m['episodes']} episodes, {m['steps']} steps, mean return {m['mean_episode_return']:.1f}")
    return out
