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
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import GoalEnvTask, PhaseBase, SequencePolicy
from warmstart.learn.optim import guarded_step, make_adamw
from warmstart.registry import PHASES
from warmstart.policies.lid import LIDPolicy
from warmstart.tasks.babyai import BabyAIEpisode, ObsWords, TaskSplit, relabel, rollout


def episode_steps(episodes: Sequence[BabyAIEpisode], history: int) -> list[tuple[ObsWords, int]]:
    """Every (observation words, action) pair of ``episodes``: the samples BC trains on."""
    return [s for ep in episodes for s in ep.steps(history)]


def bc_loss(policy: LIDPolicy, batch: dict[str, torch.Tensor], actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named loss terms of one BC minibatch: ``loss`` (mean cross-entropy of the expert action)
    and ``accuracy`` (argmax agreement, no gradient)."""
    logits, _ = policy(batch)  # (B, A)
    loss = F.cross_entropy(logits, actions)
    return {"loss": loss, "accuracy": (logits.argmax(-1) == actions).float().mean().detach()}


def bc_update(policy: LIDPolicy, optimizer: torch.optim.Optimizer, samples: Sequence[tuple[ObsWords, int]],
              max_grad_norm: float = 1.0) -> dict[str, float]:
    """One optimizer step of BC on ``samples`` ((observation, action) pairs)."""
    policy.train()
    batch = policy.encode([o for o, _ in samples])
    actions = torch.tensor([a for _, a in samples])  # (B,)
    terms = bc_loss(policy, batch, actions)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grad_norm, skipped = guarded_step(optimizer, policy.parameters(), max_grad_norm, terms["loss"].item())
    return {"loss": terms["loss"].item(), "accuracy": terms["accuracy"].item(), "grad_norm": grad_norm,
            "skipped_updates": int(skipped)}


def draw(samples: Sequence, batch_size: int, generator: torch.Generator) -> list:
    """``batch_size`` items drawn uniformly with replacement."""
    return [samples[i] for i in torch.randint(len(samples), (batch_size,), generator=generator).tolist()]


def bc_train(policy: LIDPolicy, optimizer: torch.optim.Optimizer, episodes: Sequence[BabyAIEpisode],
             updates: int, batch_size: int, generator: torch.Generator, max_grad_norm: float = 1.0) -> dict[str, float]:
    """``updates`` BC steps on minibatches of steps drawn uniformly (with replacement) from
    ``episodes``. Returns the mean loss/accuracy and ``bc_samples_per_s``."""
    steps = episode_steps(episodes, policy.spec.history)
    if not steps:
        raise ValueError("bc_train got no steps: the dataset is empty")
    losses, accs, t0 = [], [], time.perf_counter()
    for _ in range(updates):
        m = bc_update(policy, optimizer, draw(steps, batch_size, generator), max_grad_norm)
        losses.append(m["loss"])
        accs.append(m["accuracy"])
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


# ------------------------------------------------------------------------------------- the phase

DATASET_ARTIFACT = "babyai_dataset"  # the growing list of BabyAIEpisode that BC and the rounds train on


class LIDRoundsConfig(PhaseConfig):
    """One step = one round: gather ``env_steps`` env steps on training missions, keep per
    ``mode``, add to the dataset, ``updates`` BC updates on the whole dataset."""

    kind: str = "lid_rounds"
    mode: Literal["hindsight", "self_imitation"] = Field(
        "hindsight", description="hindsight: successes + relabelled failures; self_imitation: successes only")
    env_steps: int = Field(500, ge=1, description="env steps gathered per round (at least; whole episodes)")
    updates: int = Field(60, ge=1, description="BC updates after each round")
    batch_size: int = Field(32, ge=1, description="(observation, action) pairs per update")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the gathering rollouts")
    gather_batch: int = Field(8, ge=1, description="envs rolled out together (the last batch may overshoot env_steps)")
    seed_start: int = Field(5_000_000, ge=0, description="first reset seed of gathering missions (round k: + k*100000)")


@PHASES.register("lid_rounds", LIDRoundsConfig,
                 "LID active data gathering: roll out, relabel failures in hindsight (or keep successes), retrain",
                 requires={"task": GoalEnvTask, "policy": SequencePolicy})
class LIDRoundsPhase(PhaseBase):
    def __init__(self, cfg: LIDRoundsConfig, ctx):
        self.cfg, self.ctx, self.policy, self.task = cfg, ctx, ctx.policy, ctx.task
        self.opt = make_adamw(self.policy.parameters(), cfg.lr, cfg.weight_decay)
        self.data: list[BabyAIEpisode] | None = None

    key_metrics = ("train_success_rate", "kept", "loss")

    def on_start(self, step: int) -> None:
        if self.data is None:  # not restored by load_state_dict: start from what BC trained on
            self.data = list(self.ctx.artifacts.get(DATASET_ARTIFACT, None) or self.task.bot_demos())

    def step(self, step: int, global_step: int) -> dict:
        cfg = self.cfg
        gen = self.ctx.generator(global_step)
        # every episode takes >= 1 step, so env_steps seeds always suffice
        seeds = self.task.mission_seeds("seen", cfg.env_steps, cfg.seed_start + step * 100_000)
        res, _ = gather_round(self.policy, self.task.level, seeds, cfg.env_steps, cfg.mode, self.task.goals, gen,
                              self.task.max_steps, batch=cfg.gather_batch, temperature=cfg.temperature)
        self.data += res.kept
        samples = episode_steps(self.data, self.policy.spec.history)
        t0 = time.perf_counter()
        losses = [bc_update(self.policy, self.opt, draw(samples, cfg.batch_size, gen), cfg.max_grad_norm)["loss"]
                  for _ in range(cfg.updates)]
        return {**res.metrics, "loss": float(np.mean(losses)), "dataset_steps": len(samples),
                "bc_samples_per_s": cfg.updates * cfg.batch_size / (time.perf_counter() - t0)}

    def on_end(self) -> None:
        self.ctx.artifacts.put(DATASET_ARTIFACT, list(self.data))

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "data": list(self.data or [])}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.data = list(state["data"])
