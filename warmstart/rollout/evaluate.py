"""Held-out evaluation of a token policy on a reasoning task: greedy accuracy, pass@k, rewards."""

from __future__ import annotations

import torch

from warmstart.rollout.single_turn import rollout


def evaluate_reasoning(policy, task, eval_cfg, rewards=None) -> dict:
    """Greedy accuracy over ``eval_cfg.n`` held-out problems, pass@k with ``k = eval_cfg.samples``
    samples at ``eval_cfg.temperature`` (a problem counts when any sample is right), the mean of
    the recipe's reward on those samples, and task shares (e.g. ``worked``) of the greedy answers."""
    problems = task.eval_problems(eval_cfg.n)
    max_new = eval_cfg.max_new_tokens or task.max_new_tokens
    gen = torch.Generator().manual_seed(eval_cfg.seed)
    greedy, _ = rollout(policy, problems, 1, max_new, 0.0, batch_size=eval_cfg.batch_size)
    correct = [task.is_correct(e.text, p.answer) for e, p in zip(greedy, problems)]
    out = {"n": len(problems), "accuracy": sum(correct) / len(problems)}
    out.update(task.episode_metrics([e.text for e in greedy]))
    out["mean_tokens"] = sum(len(e.ids) for e in greedy) / len(greedy)
    k = eval_cfg.samples
    if k > 1 or eval_cfg.temperature > 0:
        sampled, _ = rollout(policy, problems, k, max_new, eval_cfg.temperature, generator=gen,
                             rewards=rewards, batch_size=eval_cfg.batch_size)
        hits = [task.is_correct(e.text, problems[i // k].answer) for i, e in enumerate(sampled)]
        per_problem = [any(hits[i * k : (i + 1) * k]) for i in range(len(problems))]
        out["pass@k"] = sum(per_problem) / len(problems)
        out["k"] = k
        out["sample_accuracy"] = sum(hits) / len(hits)
        if rewards is not None and len(rewards):
            out["mean_reward"] = sum(e.reward for e in sampled) / len(sampled)
        out["sample_worked"] = task.episode_metrics([e.text for e in sampled]).get("worked", float("nan"))
    return out
