"""Offline RL datasets in Minari's format: write, read back, check against the task.

Minari (Farama's successor to D4RL) stores a dataset as a directory ``ROOT/<dataset id>/`` with
``data/main_data.hdf5`` and ``data/metadata.json``; ``minari.load_dataset(id)`` finds it under the
root named by ``MINARI_DATASETS_PATH``. warmstart keeps every dataset under a root of its own
(never ``~/.minari``, never a download) and hands learners a flat :class:`OfflineDataset` of numpy
arrays, the layout offline learners sample minibatches from.

An episode of ``T`` steps holds ``T + 1`` observations; the flat view pairs ``observations[t]`` with
``next_observations[t] = observations[t + 1]``. ``terminals`` marks true ends (no bootstrap),
``timeouts`` the last step of an episode cut by a time limit or by the end of recording.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from warmstart.errors import DataError

# D4RL's reference return of an expert on Hopper (its normalised score divides by expert - random);
# the random reference is measured on the same env when a dataset is written.
HOPPER_EXPERT_REFERENCE = 3234.3


@dataclass
class Episode:
    """One recorded episode: ``observations`` (T+1, D), ``actions`` (T, A), the rest (T,)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


@dataclass
class OfflineDataset:
    """Flat transitions of a Minari dataset, plus what normalises its scores.

    Shapes: ``observations``/``next_observations`` (N, D), ``actions`` (N, A), ``rewards``,
    ``terminals``, ``timeouts`` (N,) float32; ``episode_index`` (N,) int the episode of each step.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_index: np.ndarray
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    dataset_id: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in order."""
        return np.bincount(self.episode_index, weights=self.rewards)

    def normalized_score(self, returns) -> np.ndarray:
        """D4RL's normalised score ``100 * (R - random) / (expert - random)``."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DataError(f"dataset {self.dataset_id!r} has no reference scores (ref_min_score/ref_max_score)")
        return 100.0 * (np.asarray(returns, dtype=np.float64) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)

    @classmethod
    def from_episodes(cls, episodes: list[Episode], **meta) -> "OfflineDataset":
        if not episodes:
            raise DataError(f"dataset {meta.get('dataset_id', '')!r} holds no episodes")
        obs = np.concatenate([e.observations[:-1] for e in episodes]).astype(np.float32)
        nxt = np.concatenate([e.observations[1:] for e in episodes]).astype(np.float32)
        return cls(
            observations=obs,
            actions=np.concatenate([e.actions for e in episodes]).astype(np.float32).reshape(len(obs), -1),
            rewards=np.concatenate([e.rewards for e in episodes]).astype(np.float32),
            next_observations=nxt,
            terminals=np.concatenate([e.terminations for e in episodes]).astype(np.float32),
            timeouts=np.concatenate([e.truncations for e in episodes]).astype(np.float32),
            episode_index=np.concatenate([np.full(len(e), i) for i, e in enumerate(episodes)]).astype(np.int64),
            **meta,
        )

    def check_spaces(self, obs_dim: int, act_dim: int, where: str) -> None:
        """Raise a :class:`DataError` if the dataset does not fit an env with these dimensions."""
        if self.obs_dim != obs_dim or self.act_dim != act_dim:
            raise DataError(
                f"{where}: dataset {self.dataset_id!r} has observations of size {self.obs_dim} and actions of "
                f"size {self.act_dim}, but the task's env has observations of size {obs_dim} and actions of size "
                f"{act_dim}. Use a dataset recorded on the same env (or regenerate it for this task)."
            )


@contextlib.contextmanager
def minari_root(root: str | os.PathLike) -> Iterator[Path]:
    """Point Minari at ``root`` (its ``MINARI_DATASETS_PATH``) for the duration of the block."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root.resolve())
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_minari(
    root: str | os.PathLike,
    dataset_id: str,
    episodes: list[Episode],
    env_id: str,
    ref_min_score: float,
    ref_max_score: float,
    algorithm_name: str,
    description: str,
    extra_metadata: dict | None = None,
) -> Path:
    """Write ``episodes`` as the Minari dataset ``dataset_id`` under ``root``; returns its directory.

    ``extra_metadata`` (JSON-able) is stored in ``warmstart.json`` beside Minari's own files; a
    loader compares it to decide whether a cached dataset is the one it would generate.
    """
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    with minari_root(root):
        path = Path(os.environ["MINARI_DATASETS_PATH"]) / dataset_id
        if path.exists():
            import shutil

            shutil.rmtree(path)
        env = gym.make(env_id, disable_env_checker=True)
        buffers = [
            EpisodeBuffer(
                id=i,
                observations=e.observations.astype(np.float64),  # the env's own dtype (Box float64)
                actions=e.actions.astype(np.float32),
                rewards=[float(r) for r in e.rewards],
                terminations=[bool(t) for t in e.terminations],
                truncations=[bool(t) for t in e.truncations],
            )
            for i, e in enumerate(episodes)
        ]
        minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            eval_env=env_id,
            algorithm_name=algorithm_name,
            ref_min_score=float(ref_min_score),
            ref_max_score=float(ref_max_score),
            description=description,
            data_format="hdf5",
        )
        env.close()
        (path / "warmstart.json").write_text(json.dumps(extra_metadata or {}, indent=2, sort_keys=True))
    return path


def load_minari(root: str | os.PathLike, dataset_id: str) -> OfflineDataset:
    """Read a Minari dataset written under ``root`` into an :class:`OfflineDataset`.

    A missing, unreadable or internally inconsistent dataset is a :class:`DataError` naming the
    directory and what to do (delete it so it is regenerated).
    """
    import minari

    path = Path(root) / dataset_id
    hint = f"Delete {path} to have it regenerated, or point the recipe at another data_dir."
    if not (path / "data" / "metadata.json").exists():
        raise DataError(f"no Minari dataset {dataset_id!r} under {root} (expected {path}/data/metadata.json).")
    with minari_root(root):
        try:
            ds = minari.load_dataset(dataset_id)
            episodes = []
            for ep in ds.iterate_episodes():
                episodes.append(
                    Episode(
                        observations=np.asarray(ep.observations, dtype=np.float32),
                        actions=np.asarray(ep.actions, dtype=np.float32).reshape(len(ep.rewards), -1),
                        rewards=np.asarray(ep.rewards, dtype=np.float32),
                        terminations=np.asarray(ep.terminations, dtype=np.float32),
                        truncations=np.asarray(ep.truncations, dtype=np.float32),
                    )
                )
            meta = ds.storage.metadata
        except DataError:
            raise
        except Exception as e:  # h5py/json/minari raise many types for a damaged file
            raise DataError(f"Minari dataset {dataset_id!r} at {path} cannot be read ({type(e).__name__}: {e}). {hint}") from None
    for i, e in enumerate(episodes):
        if len(e.observations) != len(e.rewards) + 1 or len(e.actions) != len(e.rewards):
            raise DataError(
                f"Minari dataset {dataset_id!r} at {path}: episode {i} has {len(e.observations)} observations, "
                f"{len(e.actions)} actions and {len(e.rewards)} rewards (expected T+1, T, T). {hint}"
            )
        if not np.isfinite(e.observations).all() or not np.isfinite(e.rewards).all():
            raise DataError(f"Minari dataset {dataset_id!r} at {path}: episode {i} holds NaN or inf values. {hint}")
    extra = {}
    if (path / "warmstart.json").exists():
        extra = json.loads((path / "warmstart.json").read_text())
    return OfflineDataset.from_episodes(
        episodes,
        ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"),
        dataset_id=dataset_id,
        info={"warmstart": extra, "total_episodes": len(episodes), "path": str(path)},
    )


def load_minari_dir(path: str | os.PathLike) -> OfflineDataset:
    """:func:`load_minari` for a dataset directory ``ROOT/<namespace>/<name>`` (its id is the last
    two parts of the path)."""
    path = Path(path)
    return load_minari(path.parent.parent, f"{path.parent.name}/{path.name}")


def to_episodes(ds: OfflineDataset) -> list[Episode]:
    """Split a flat dataset back into episodes (inverse of :meth:`OfflineDataset.from_episodes`)."""
    out = []
    bounds = np.flatnonzero(np.diff(ds.episode_index)) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(ds)]):
        out.append(
            Episode(
                observations=np.concatenate([ds.observations[s:e], ds.next_observations[e - 1 : e]]),
                actions=ds.actions[s:e],
                rewards=ds.rewards[s:e],
                terminations=ds.terminals[s:e],
                truncations=ds.timeouts[s:e],
            )
        )
    return out
