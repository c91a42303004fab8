"""LID's learning loop on BabyAI (METHODS.md C.3-C.4), as plain functions the phases call.

* :func:`bc_train` -- behaviour cloning: cross-entropy of the demonstrated action, minibatches drawn
  with replacement from a list of episodes' steps, a fixed number of updates (so two datasets of
  different sizes get the same compute).
* :func:`gather_round` -- active data gathering: roll the policy out (sampling) on *training* missions
  until a budget of env steps is spent, then keep, per ``mode``:
  ``hindsight``: successes plus every failure relabelled with a mission it accomplished
  (:func:`warmstart.tasks.babyai.relabel`); ``self_imitation``: successes only.
* :func:`evaluate_splits` -- greedy success rate and mean episode length on seen and unseen goal
  combinations, over fixed evaluation seeds disjoint from the training ones.

Design choices not fixed by the paper (its loop's code was never released): each round *adds* the
kept episodes to the dataset (bot demos stay in it) and continues training the same policy for a
fixed number of updates; both data modes spend the same env steps and the same updates per round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from warmstart.policies.lid import LIDPolicy
from warmstart.tasks.babyai import BabyAIEpisode, TaskSplit, relabel, rollout


def bc_loss(policy: LIDPolicy, batch: dict[str, torch.Tensor], actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named loss terms of one BC minibatch: ``loss`` (mean cross-entropy of the expert action)
    and ``accuracy`` (argmax agreement, no gradient)."""
    logits, _ = policy(batch)  # (B, A)
    loss = F.cross_entropy(logits, actions)
    return {"loss": loss, "accuracy": (logits.argmax(-1) == actions).float().mean().detach()}


def bc_train(policy: LIDPolicy, optimizer: torch.optim.Optimizer, episodes: Sequence[BabyAIEpisode],
             updates: int, batch_size: int, generator: torch.Generator, max_grad_norm: float = 1.0) -> dict[str, float]:
    """``updates`` BC steps on minibatches of steps drawn uniformly (with replacement) from
    ``episodes``. Returns the mean loss/accuracy and ``bc_samples_per_s``."""
    steps = [s for ep in episodes for s in ep.steps(policy.spec.history)]
    if not steps:
        raise ValueError("bc_train got no steps: the dataset is empty")
    policy.train()
    losses, accs, t0 = [], [], time.perf_counter()
    for _ in range(updates):
        idx = torch.randint(len(steps), (batch_size,), generator=generator).tolist()
        batch = policy.encode([steps[i][0] for i in idx])
        actions = torch.tensor([steps[i][1] for i in idx])
        terms = bc_loss(policy, batch, actions)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
        optimizer.step()
        losses.append(terms["loss"].item())
        accs.append(float(terms["accuracy"]))
    dt = time.perf_counter() - t0
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
            "bc_samples_per_s": updates * batch_size / dt, "dataset_steps": len(steps)}


def policy_actor(policy: LIDPolicy, greedy: bool, generator: torch.Generator | None = None, temperature: float = 1.0):
    """The ``act`` callable :func:`warmstart.tasks.babyai.rollout` wants, in eval mode."""

    def act(words):
        policy.eval()
        return policy.act(words, greedy=greedy, generator=generator, temperature=temperature)

    return act


@dataclass
class RoundResult:
    kept: list[BabyAIEpisode]
    metrics: dict[str, float]


def gather_round(policy: LIDPolicy, level: str, seeds: Sequence[int], env_steps: int, mode: str, split: TaskSplit,
                 generator: torch.Generator, max_steps: int | None = None, batch: int = 32,
                 temperature: float = 1.0) -> tuple[RoundResult, int]:
    """Roll the policy out on training missions (``seeds`` in order, ``batch`` at a time) until at
    least ``env_steps`` env steps are spent; keep episodes per ``mode`` (``hindsight`` or
    ``self_imitation``). Returns the result and how many seeds were used."""
    if mode not in ("hindsight", "self_imitation"):
        raise ValueError(f"mode {mode!r}: use 'hindsight' or 'self_imitation'")
    act = policy_actor(policy, greedy=False, generator=generator, temperature=temperature)
    eps: list[BabyAIEpisode] = []
    used, spent, t0 = 0, 0, time.perf_counter()
    while spent < env_steps:
        if used >= len(seeds):
            raise ValueError(f"gather_round ran out of training seeds after {used} episodes")
        chunk = seeds[used:used + batch]
        new = rollout(level, chunk, act, policy.spec.history, max_steps=max_steps, batch=batch)
        used += len(chunk)
        eps += new
        spent += sum(len(e) for e in new)
    dt = time.perf_counter() - t0
    succ = [e for e in eps if e.success]
    kept = list(succ)
    n_relabelled = 0
    if mode == "hindsight":
        for e in eps:
            r = relabel(e, split)
            if r is not None:
                kept.append(r)
                n_relabelled += 1
    return RoundResult(kept, {
        "episodes": len(eps), "env_steps": spent, "train_success_rate": len(succ) / len(eps),
        "kept": len(kept), "relabelled": n_relabelled, "env_steps_per_s": spent / dt,
    }), used


def evaluate_splits(policy: LIDPolicy, level: str, seeds: dict[str, Sequence[int]], max_steps: int | None = None,
                    batch: int = 100) -> dict[str, float]:
    """Greedy episodes on each split's seeds: ``success_rate_<split>`` and ``mean_length_<split>``."""
    out: dict[str, float] = {}
    act = policy_actor(policy, greedy=True)
    for name, ss in seeds.items():
        eps = rollout(level, ss, act, policy.spec.history, max_steps=max_steps, batch=batch)
        out[f"success_rate_{name}"] = float(np.mean([e.success for e in eps]))
        out[f"mean_length_{name}"] = float(np.mean([len(e) for e in eps]))
        out[f"episodes_{name}"] = len(eps)
    return out
