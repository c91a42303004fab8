"""Held-out evaluation of any policy on any task, dispatched on the task's contract.

* an :class:`~warmstart.contracts.EnvTask` runs its own episodes (``task.evaluate``);
* a :class:`~warmstart.contracts.MultiTurnTask` gets greedy multi-turn episodes, scored by its
  ``turn_metrics`` (e.g. Acc@t1, Acc@t2, Δ for self-correction);
* a :class:`~warmstart.contracts.SingleTurnTask`: greedy accuracy, pass@k, mean reward, task shares.
"""

from __future__ import annotations

import torch

from warmstart.contracts import EnvTask, MultiTurnTask, SingleTurnTask
from warmstart.errors import ConfigError
from warmstart.rollout import Sampling, rollout


def evaluate(policy, task, eval_cfg, rewards=None) -> dict:
    """Evaluate ``policy`` on ``task``'s held-out split with the recipe's ``eval:`` settings."""
    if isinstance(task, EnvTask):
        return task.evaluate(policy, eval_cfg)
    if isinstance(task, MultiTurnTask):
        return evaluate_multi_turn(policy, task, eval_cfg)
    if isinstance(task, SingleTurnTask):
        return evaluate_reasoning(policy, task, eval_cfg, rewards)
    raise ConfigError(f"cannot evaluate on a {type(task).__name__}: it is neither a Gymnasium task, a multi-turn "
                      "task nor a reasoning task (see warmstart.contracts).")


def evaluate_multi_turn(policy, task, eval_cfg) -> dict:
    """Greedy multi-turn episodes on ``eval_cfg.n`` held-out problems, scored by ``task.turn_metrics``."""
    problems = task.eval_problems(eval_cfg.n)
    sampling = Sampling(max_new_tokens=eval_cfg.max_new_tokens or task.max_new_tokens, temperature=0.0,
                        batch_size=eval_cfg.batch_size)
    eps, _ = rollout(policy, problems, task=task, sampling=sampling)
    return task.turn_metrics(eps)


def subset_accuracy(problems: list, correct: list[bool]) -> dict[str, float]:
    """``accuracy/<subset>`` for problems tagged with ``info["subset"]`` (e.g. one dataset of several),
    and ``accuracy_mean``, their unweighted mean; empty when no problem is tagged."""
    per: dict[str, list[bool]] = {}
    for p, c in zip(problems, correct):
        if p.info.get("subset") is not None:
            per.setdefault(str(p.info["subset"]), []).append(c)
    out = {f"accuracy/{k}": sum(v) / len(v) for k, v in per.items()}
    if per:
        out["accuracy_mean"] = sum(out.values()) / len(per)
    return out


def evaluate_reasoning(policy, task, eval_cfg, rewards=None) -> dict:
    """Greedy accuracy over ``eval_cfg.n`` held-out problems, pass@k with ``k = eval_cfg.samples``
    samples at ``eval_cfg.temperature`` (a problem counts when any sample is right), the mean of
    the recipe's reward on those samples, and task shares (e.g. ``worked``) of the greedy answers."""
    problems = task.eval_problems(eval_cfg.n)
    max_new = eval_cfg.max_new_tokens or task.max_new_tokens
    gen = torch.Generator().manual_seed(eval_cfg.seed)
    greedy, _ = rollout(policy, problems, sampling=Sampling(max_new, 0.0, batch_size=eval_cfg.batch_size))
    correct = [task.is_correct(e.text, p.answer) for e, p in zip(greedy, problems)]
    out = {"n": len(problems), "accuracy": sum(correct) / len(problems)}
    out.update(subset_accuracy(problems, correct))
    out.update(task.episode_metrics([e.text for e in greedy]))
    out["mean_tokens"] = sum(len(e.ids) for e in greedy) / len(greedy)
    k = eval_cfg.samples
    if k > 1 or eval_cfg.temperature > 0:
        sampled, _ = rollout(policy, problems, samples=k, generator=gen, rewards=rewards,
                             sampling=Sampling(max_new, eval_cfg.temperature, batch_size=eval_cfg.batch_size))
        hits = [task.is_correct(e.text, problems[i // k].answer) for i, e in enumerate(sampled)]
        per_problem = [any(hits[i * k : (i + 1) * k]) for i in range(len(problems))]
        out["pass@k"] = sum(per_problem) / len(problems)
        out["k"] = k
        out["sample_accuracy"] = sum(hits) / len(hits)
        if rewards is not None and len(rewards):
            out["mean_reward"] = sum(e.reward for e in sampled) / len(sampled)
        out["sample_worked"] = task.episode_metrics([e.text for e in sampled]).get("worked", float("nan"))
    return out
