"""Multi-turn rollouts: a policy talks with a task for several turns, batched across episodes.

The loop, for a batch of episodes (G samples of each problem, one GRPO group per problem)::

    turn 0: every episode samples its first turn        (one policy.sample call for all of them)
            task.respond(episode, 0) -> TurnResult       (reward of turn 0, next message or end)
            the message is appended with add_env          (environment tokens: no loss, no gradient)
    turn 1: every episode still active samples again     (one call, prompts = prompt + all so far)
    ...     until the task ends each episode or ``max_turns`` is reached

What a multi-turn task provides (:class:`MultiTurnTask`): ``max_turns``, ``max_new_tokens`` (per
turn) and ``respond(episode, turn) -> TurnResult``. ``respond`` sees the whole episode (its
``turn_texts``, ``info["answer"]`` and whatever the task put into ``info``), so the same loop runs
self-correction (the message is "revise"), a patient answering a doctor's questions (the message is
the answer), or tool calls (the message is the tool's output). The per-turn reward terms it returns
are stored by name in ``episode.turn_rewards[turn]``; learners turn them into per-token advantages
of that turn's tokens (``TokenBatch.turn_index`` says which turn each target token belongs to).

Environment messages are tokenised with ``policy.encode`` as plain text: a task talking to a chat
model formats its message (role markers and all) itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from warmstart.episode import Episode
from warmstart.tasks.base import Problem


@dataclass
class TurnResult:
    """A task's answer to one policy turn: the reward terms of that turn, and either the next
    environment message (``message``) or the end of the episode (``done=True``)."""

    rewards: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    done: bool = False


class MultiTurnTask(Protocol):
    max_turns: int
    max_new_tokens: int

    def respond(self, episode: Episode, turn: int) -> TurnResult: ...


def turn_reward_matrix(episodes: list[Episode], num_turns: int | None = None) -> torch.Tensor:
    """(B, K) sum of each turn's reward terms (None counts 0); turns an episode never took are 0."""
    K = num_turns or max((len(e.turns) for e in episodes), default=0)
    out = torch.zeros(len(episodes), K)
    for b, e in enumerate(episodes):
        for k, terms in enumerate(e.turn_rewards[:K]):
            out[b, k] = sum(v for v in terms.values() if v is not None)
    return out


def multi_turn_rollout(
    policy,
    task: MultiTurnTask,
    problems: list[Problem],
    samples_per_problem: int,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    max_turns: int | None = None,
    max_new_tokens: int | None = None,
    rewards=None,
    batch_size: int | None = None,
    group_offset: int = 0,
) -> tuple[list[Episode], dict]:
    """Run ``samples_per_problem`` episodes of each problem for up to ``max_turns`` policy turns.

    All active episodes sample their next turn in one ``policy.sample`` call. After the loop,
    ``rewards`` (a RewardSet of final, whole-episode terms) scores the episodes when given (its total
    is kept in ``info["episode_reward"]``); then ``episode.reward`` = the sum of all turn rewards +
    that total (learners reweight turns from ``turn_rewards``). Returns episodes and
    timing stats, as :func:`warmstart.rollout.single_turn.rollout` does.
    """
    max_turns = max_turns or task.max_turns
    max_new = max_new_tokens or task.max_new_tokens
    episodes: list[Episode] = []
    for i, prob in enumerate(problems):
        pids = policy.encode_prompt(prob.prompt)
        for _ in range(samples_per_problem):
            episodes.append(Episode(prompt=prob.prompt, prompt_ids=list(pids), group=group_offset + i,
                                    info={"answer": prob.answer, **prob.info}))
    active = list(range(len(episodes)))
    t0, ntok = time.time(), 0
    for turn in range(max_turns):
        if not active:
            break
        ctx_ids = [episodes[i].prompt_ids + episodes[i].ids for i in active]
        out = policy.sample(ctx_ids, max_new, temperature=temperature, top_p=top_p, generator=generator,
                            batch_size=batch_size)
        still = []
        for i, ids, lps, fin in zip(active, out.ids, out.logprobs, out.finished):
            e = episodes[i]
            ntok += len(ids)
            e.add_turn(ids, lps, policy.decode(ids))
            e.info.setdefault("finished", []).append(fin)
            res = task.respond(e, turn)
            e.turn_rewards[turn] = dict(res.rewards)
            if res.done or res.message is None or turn + 1 >= max_turns:
                continue
            e.add_env(policy.encode(res.message))
            still.append(i)
        active = still
    dt = time.time() - t0
    if rewards is not None and len(rewards):
        rewards.score(episodes)
    for e in episodes:
        e.info["episode_reward"] = e.reward if rewards is not None and len(rewards) else 0.0
        e.reward = e.info["episode_reward"] + sum(v for terms in e.turn_rewards for v in terms.values() if v is not None)
    return episodes, {"sample_time_s": dt, "sampled_tokens": ntok, "sample_tokens_per_s": ntok / max(dt, 1e-9)}


# ------------------------------------------------------------------------------ self-correction metrics


def self_correction_metrics(correct: list[list[bool]], changed: list[bool] | None = None) -> dict[str, float]:
    """Acc@t for every turn and, with two or more turns, the SCoRe metrics between the first and
    the last: ``delta`` = Acc@t_last - Acc@t1, ``delta_i2c`` = share of problems wrong at t1 and
    right at the last turn, ``delta_c2i`` = right at t1 and wrong at the last turn (all shares of
    all problems, as in the paper). ``correct[p][k]``: problem p correct at turn k. ``changed[p]``:
    the last answer differs from the first (its share is reported as ``changed``)."""
    n = len(correct)
    if n == 0:
        return {}
    K = len(correct[0])
    out: dict[str, float] = {}
    for k in range(K):
        out[f"acc@t{k + 1}"] = sum(c[k] for c in correct) / n
    if K >= 2:
        out["delta"] = out[f"acc@t{K}"] - out["acc@t1"]
        out["delta_i2c"] = sum((not c[0]) and c[-1] for c in correct) / n
        out["delta_c2i"] = sum(c[0] and not c[-1] for c in correct) / n
    if changed is not None:
        out["changed"] = sum(changed) / n
    return out
