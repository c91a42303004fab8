"""Gymnasium environments as warmstart tasks: ``kind: gym``.

A :class:`GymTask` makes vectorised envs for a learner (:meth:`GymTask.make_envs`) and evaluates a
vector policy over held-out episodes (:meth:`GymTask.evaluate`). Any registered Gymnasium id works
(``CartPole-v1``, ``Pendulum-v1``, ``warmstart/LotSizing-v0`` ...); ``env_kwargs`` go to
``gymnasium.make``.

:class:`VecEnv` is a deliberately small synchronous vector env rather than
``gymnasium.vector.SyncVectorEnv``: it resets finished sub-envs in the same step (returning the final
observation separately, so truncated episodes can bootstrap), tracks episode returns, stacks the
per-step ``info`` entries a learner asks for (e.g. PDPPO's ``post_decision_state``), and pickles
whole -- which is how a learner checkpoints env state for an exact resume.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from pydantic import Field

from warmstart.config import EvalConfig, PluginConfig
from warmstart.errors import ConfigError
from warmstart.registry import TASKS


class GymTaskConfig(PluginConfig):
    env_id: str = Field(description="Gymnasium id, e.g. CartPole-v1 or warmstart/LotSizing-v0")
    env_kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for gymnasium.make")
    max_episode_steps: int | None = Field(None, ge=1, description="override the env's time limit")
    greedy_eval: bool = Field(
        True, description="evaluate with the most likely action (Gaussian mean) instead of sampling"
    )
    ref_min_score: float | None = Field(None, description="return of a random policy: with ref_max_score, evaluations report D4RL's normalized_return")
    ref_max_score: float | None = Field(None, description="return of an expert (D4RL's reference; Hopper: 3234.3)")


class VecEnv:
    """N Gymnasium envs stepped in lock-step with same-step autoreset.

    ``step(actions)`` returns ``(obs, rewards, terminated, truncated, info)`` with numpy arrays of
    leading size N. Where an episode ended, ``obs`` already holds the first observation of the next
    episode and ``info["final_obs"]`` the last one of the finished episode; ``info["episode_return"]``
    and ``info["episode_length"]`` are set there (NaN elsewhere). Keys in ``info_keys`` that the envs
    report are stacked into ``info[key]`` (N, ...). An env may register a faster native vector env
    with the same contract as its ``vector_entry_point`` (see :meth:`GymTask.make_envs`).
    """

    def __init__(self, envs: list[gym.Env], info_keys: tuple[str, ...] = ()):
        self.envs = envs
        self.num_envs = len(envs)
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        self.info_keys = info_keys
        self._box = isinstance(self.single_action_space, gym.spaces.Box)
        self._ret = np.zeros(self.num_envs)
        self._len = np.zeros(self.num_envs, dtype=np.int64)
        self._obs_dim = int(np.prod(self.single_observation_space.shape))

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs = np.zeros((self.num_envs, self._obs_dim), dtype=np.float32)
        for i, env in enumerate(self.envs):
            o, _ = env.reset(seed=None if seed is None else seed + i)
            obs[i] = np.asarray(o, dtype=np.float32).reshape(-1)
        self._ret[:] = 0
        self._len[:] = 0
        return obs

    def step(self, actions: np.ndarray):
        n = self.num_envs
        if self._box:
            actions = np.clip(actions, self.single_action_space.low, self.single_action_space.high)
        obs = np.empty((n, self._obs_dim), dtype=np.float32)
        rew = np.empty(n, dtype=np.float64)
        term = np.empty(n, dtype=bool)
        trunc = np.empty(n, dtype=bool)
        final_obs = None
        ep_ret = ep_len = None
        stacked: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            o, r, te, tr, inf = env.step(actions[i])
            rew[i], term[i], trunc[i] = r, te, tr
            for k in self.info_keys:
                if k in inf:
                    v = inf[k]
                    if k not in stacked:
                        stacked[k] = np.zeros((n, *np.shape(v)), dtype=np.asarray(v).dtype)
                    stacked[k][i] = v
            self._ret[i] += r
            self._len[i] += 1
            if te or tr:
                if final_obs is None:
                    final_obs = np.zeros((n, self._obs_dim), dtype=np.float32)
                    ep_ret, ep_len = np.full(n, np.nan), np.full(n, np.nan)
                final_obs[i] = np.asarray(o, dtype=np.float32).reshape(-1)
                ep_ret[i], ep_len[i] = self._ret[i], self._len[i]
                self._ret[i], self._len[i] = 0.0, 0
                o, _ = env.reset()
            obs[i] = np.asarray(o, dtype=np.float32).reshape(-1)
        info = {"final_obs": final_obs, "episode_return": ep_ret, "episode_length": ep_len, **stacked}
        return obs, rew, term, trunc, info

    def close(self) -> None:
        for e in self.envs:
            e.close()


class GymTask:
    """A Gymnasium env id + kwargs: vector envs for training, held-out episodes for evaluation."""

    def __init__(self, cfg: GymTaskConfig, split: str = "train", seed: int = 0):
        self.cfg, self.split, self.seed = cfg, split, seed
        env = self._make_one()
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        env.close()

    def _make_one(self) -> gym.Env:
        kwargs = dict(self.cfg.env_kwargs)
        if self.cfg.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.cfg.max_episode_steps
        try:
            # the checker wrapper costs time on every step; check_env is run by the tests instead
            return gym.make(self.cfg.env_id, disable_env_checker=True, **kwargs)
        except gym.error.Error as e:
            raise ConfigError(f"task.env_id {self.cfg.env_id!r}: gymnasium cannot make it ({e}).") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"task.env_kwargs for {self.cfg.env_id!r}: {e}") from None

    def make_envs(self, n: int, seed: int, info_keys: tuple[str, ...] = ()) -> tuple[VecEnv, np.ndarray]:
        """``n`` envs seeded ``seed, seed+1, ...``; returns the vector env and its first observations.
        An env whose Gymnasium spec has a ``vector_entry_point`` with ``warmstart_vec_env = True`` (it
        keeps :class:`VecEnv`'s contract, e.g. the numpy lot-sizing env) is built natively instead,
        seeded with ``seed``."""
        native = self._native_vector()
        if native is not None:
            spec = gym.spec(self.cfg.env_id)
            try:
                venv = native(num_envs=n, info_keys=info_keys, **{**spec.kwargs, **self.cfg.env_kwargs})
            except (TypeError, ValueError) as e:
                raise ConfigError(f"task.env_kwargs for {self.cfg.env_id!r}: {e}") from None
            return venv, venv.reset(seed=seed)
        venv = VecEnv([self._make_one() for _ in range(n)], info_keys=info_keys)
        return venv, venv.reset(seed=seed)

    def _native_vector(self):
        """The spec's vector entry point if it keeps VecEnv's contract (and no time-limit override,
        which only the per-env wrapper applies), else None."""
        if self.cfg.max_episode_steps is not None:
            return None
        ep = getattr(gym.spec(self.cfg.env_id), "vector_entry_point", None)
        if ep is None:
            return None
        if not callable(ep):
            from gymnasium.envs.registration import load_env_creator

            ep = load_env_creator(ep)
        return ep if getattr(ep, "warmstart_vec_env", False) else None

    def evaluate(self, policy, eval_cfg: EvalConfig, ctx=None) -> dict[str, float]:
        """``eval_cfg.n`` episodes, episode k from an env reset with seed ``eval_cfg.seed + k``
        (run in parallel batches). Returns ``mean_return``, ``std_return``, ``mean_length`` and,
        for envs that report ``info["cost"]`` (lot-sizing), ``mean_cost`` / ``std_cost``; with reference
        scores in the config, ``normalized_return`` (D4RL's 100 * (R - random) / (expert - random))."""
        import torch

        gen = torch.Generator().manual_seed(eval_cfg.seed)
        returns, lengths, costs = [], [], []
        n, batch = eval_cfg.n, min(eval_cfg.n, 64)
        was_training = policy.training
        policy.eval()
        try:
            for start in range(0, n, batch):
                envs = [self._make_one() for _ in range(min(batch, n - start))]
                obs = np.stack(
                    [np.asarray(e.reset(seed=eval_cfg.seed + start + i)[0], np.float32).reshape(-1) for i, e in enumerate(envs)]
                )
                ret, ln, cost = np.zeros(len(envs)), np.zeros(len(envs)), np.zeros(len(envs))
                alive = list(range(len(envs)))
                while alive:
                    acts = policy.predict(obs[alive], deterministic=self.cfg.greedy_eval, generator=gen)
                    still = []
                    for j, i in enumerate(alive):
                        o, r, te, tr, inf = envs[i].step(acts[j])
                        ret[i] += r
                        ln[i] += 1
                        cost[i] += inf.get("cost", 0.0)
                        obs[i] = np.asarray(o, np.float32).reshape(-1)
                        if not (te or tr):
                            still.append(i)
                    alive = still
                returns += ret.tolist()
                lengths += ln.tolist()
                costs += cost.tolist()
                for e in envs:
                    e.close()
        finally:
            policy.train(was_training)
        out = {
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
            "mean_length": float(np.mean(lengths)),
            "episodes": len(returns),
        }
        if any(costs):
            out["mean_cost"] = float(np.mean(costs))
            out["std_cost"] = float(np.std(costs))
        lo, hi = self.cfg.ref_min_score, self.cfg.ref_max_score
        if lo is not None and hi is not None:  # D4RL's normalised score: 0 = random, 100 = expert
            out["normalized_return"] = 100.0 * (out["mean_return"] - lo) / (hi - lo)
        return out


@TASKS.register("gym", GymTaskConfig, "a Gymnasium environment (CartPole-v1, warmstart/LotSizing-v0, ...)")
def build_gym_task(cfg: GymTaskConfig, split: str = "train", seed: int = 0) -> GymTask:
    if cfg.env_id.startswith("warmstart/"):
        import warmstart.tasks.lotsizing  # noqa: F401  (registers warmstart/LotSizing-v0)
    return GymTask(cfg, split=split, seed=seed)
