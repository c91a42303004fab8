"""The one rollout: problems in, episodes out. Single-turn sampling is a multi-turn episode of one turn.

The loop, for a batch of episodes (``samples`` of each problem, one GRPO group per problem)::

    turn 0: every episode samples its first turn        (one policy.sample call for all of them)
            task.respond(episode, 0) -> TurnResult       (reward terms of turn 0, next message or end)
            the message is appended with add_env          (environment tokens: no loss, no gradient)
    turn 1: every episode still active samples again     (one call, prompts = prompt + all so far)
    ...     until the task ends each episode or ``max_turns`` is reached

A task without ``respond`` (not :class:`~warmstart.contracts.RespondsToTurns`: a single-turn task, or
none at all) ends every episode after its first turn. Token-in, token-out: the context of turn k is exactly the
token ids sampled and appended so far, never a re-rendered conversation. Environment messages are
tokenised with ``policy.encode`` as plain text, or -- when the task names the message's ``role``
(e.g. ``"tool"``) -- with ``policy.encode_message``, which wraps it in the chat template's markers for
that role (plain text for a policy without a template). A message may bring images (a tool's zoomed
crop): they are appended to ``Episode.images`` (``img_2``, ``img_3``, ... after the prompt's) and
their placeholder tokens follow the message's text, environment tokens like it; the policy (an
:class:`~warmstart.contracts.ImageTokenPolicy`) encodes them when it samples the next turn and when
it is trained.

After the loop, ``rewards`` (a :class:`~warmstart.rewards.RewardSet`) scores the episodes when given:
whole-episode terms go to ``episode.rewards``, per-turn terms to ``episode.turn_rewards[k]``, and
``episode.reward`` = the weighted whole-episode total + every turn's reward terms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from warmstart.contracts import ImageTokenPolicy, RespondsToTurns
from warmstart.episode import Episode
from warmstart.errors import ConfigError
from warmstart.rollout.workers import shard_generators, split_evenly


@dataclass
class Sampling:
    """How to sample: temperature (0 = greedy), nucleus mass, per-turn limits and batching.

    ``max_new_tokens`` is one limit for every turn or a list with one per turn (the last repeats),
    e.g. a short capped first attempt and a longer revision. ``stop`` strings end a turn early (the
    stop string is kept, as the last tokens of the turn); single-token stops end sampling at once,
    longer ones are cut after sampling.
    """

    max_new_tokens: int | list[int] = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    batch_size: int | None = None

    def limit(self, turn: int) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        if not self.max_new_tokens:
            raise ConfigError("max_new_tokens: an empty list; give one limit per turn, e.g. [16, 64].")
        return self.max_new_tokens[min(turn, len(self.max_new_tokens) - 1)]


def _stops(policy, stop: list[str]) -> tuple[list[int] | None, list[str]]:
    """Split stop strings into single-token ids (the sampler stops on them) and longer strings."""
    ids, longer = [], []
    for s in stop:
        enc = policy.encode(s)
        if len(enc) == 1:
            ids.append(enc[0])
        else:
            longer.append(s)
    return (ids or None), longer


def _cut_at_stop(policy, ids: list[int], lps: list[float], stops: list[str]) -> tuple[list[int], list[float], bool]:
    """Keep tokens up to and including the first one at which the decoded text contains a stop string."""
    for j in range(1, len(ids) + 1):
        text = policy.decode(ids[:j])
        if any(s in text for s in stops):
            return ids[:j], lps[:j], True
    return ids, lps, False


def rollout(
    policy,
    problems: list,
    *,
    task=None,
    samples: int = 1,
    sampling: Sampling | None = None,
    generator: torch.Generator | None = None,
    rewards=None,
    max_turns: int | None = None,
    group_offset: int = 0,
    workers=None,
) -> tuple[list[Episode], dict]:
    """Run ``samples`` episodes of each problem for up to ``max_turns`` policy turns (default: the
    task's ``max_turns``, or 1 for a single-turn task), all active episodes sampling each turn in
    one ``policy.sample`` call. Returns the episodes and timing stats (``sample_time_s``,
    ``sampled_tokens``, ``sample_tokens_per_s``).

    ``workers`` (a pool from :mod:`warmstart.rollout.workers`, e.g. the run's ``ctx.workers``)
    splits the problems into its shards and samples them there (Ray actors, or shard by shard in
    this process); the rewards are then scored here, on all episodes at once."""
    if workers is not None and not workers.trivial:
        return _sharded_rollout(workers, policy, problems, task=task, samples=samples, sampling=sampling,
                                generator=generator, rewards=rewards, max_turns=max_turns, group_offset=group_offset)
    sampling = sampling or Sampling(max_new_tokens=task.max_new_tokens if task is not None else 64)
    multi = isinstance(task, RespondsToTurns)
    turns = max_turns or (task.max_turns if multi else 1)
    stop_ids, long_stops = _stops(policy, sampling.stop) if sampling.stop else (None, [])
    episodes: list[Episode] = []
    for i, prob in enumerate(problems):
        # a VLM's prompt ids hold its images' placeholder tokens, so the images go into the encoding too
        if prob.images:
            pids = policy.encode_prompt(prob.prompt, prob.images)
        elif prob.tools:  # a chat policy renders the tool schemas with its template
            pids = policy.encode_prompt(prob.prompt, tools=prob.tools)
        else:
            pids = policy.encode_prompt(prob.prompt)
        images = list(prob.images)
        for _ in range(samples):
            episodes.append(Episode(prompt=prob.prompt, prompt_ids=list(pids), group=group_offset + i, images=images,
                                    info={"answer": prob.answer, **prob.info}))
    active = list(range(len(episodes)))
    t0, ntok = time.time(), 0
    for turn in range(turns):
        if not active:
            break
        ctx_ids = [episodes[i].prompt_ids + episodes[i].ids for i in active]
        kw = {"stop_ids": stop_ids} if stop_ids else {}
        if any(episodes[i].images for i in active):
            kw["images"] = [episodes[i].images for i in active]
        out = policy.sample(ctx_ids, sampling.limit(turn), temperature=sampling.temperature, top_p=sampling.top_p,
                            generator=generator, batch_size=sampling.batch_size, **kw)
        still = []
        for i, ids, lps, fin in zip(active, out.ids, out.logprobs, out.finished):
            e = episodes[i]
            if long_stops:
                ids, lps, hit = _cut_at_stop(policy, list(ids), list(lps), long_stops)
                fin = fin or hit
            ntok += len(ids)
            e.add_turn(ids, lps, policy.decode(ids))
            e.info.setdefault("finished", []).append(fin)
            if not multi:
                continue
            res = task.respond(e, turn)
            e.turn_rewards[turn] = dict(res.rewards)
            if res.done or res.message is None or turn + 1 >= turns:
                continue
            closed = bool(ids) and ids[-1] == policy.eos_id  # a turn cut at its limit has no end marker yet
            if res.images:
                _check_reads_images(policy, task, turn)
                # a new list: the samples of a group started from one shared list of prompt images
                e.images = [*e.images, *res.images]
                e.add_env(policy.encode_message(res.message, res.role, closed, images=res.images))
            elif res.role:  # a message with a role (a tool's output) is wrapped in the chat template for that role
                e.add_env(policy.encode_message(res.message, res.role, closed))
            else:
                e.add_env(policy.encode(res.message))
            still.append(i)
        active = still
    dt = time.time() - t0
    _score(episodes, rewards)
    return episodes, {"sample_time_s": dt, "sampled_tokens": ntok, "sample_tokens_per_s": ntok / max(dt, 1e-9)}


def _check_reads_images(policy, task, turn: int) -> None:
    if not isinstance(policy, ImageTokenPolicy):
        raise ConfigError(f"the task ({type(task).__name__}) answered turn {turn} with an image (a tool's output), but the "
                          f"policy ({type(policy).__name__}) reads text only: use a vision-language policy "
                          "(policy.kind: vlm) or the task's text variant.")


def _score(episodes: list[Episode], rewards) -> None:
    if rewards is not None and len(rewards):
        rewards.score(episodes)
    else:
        for e in episodes:
            e.info["episode_reward"] = 0.0
            e.reward = e.turn_reward_total()


def _rollout_shard(policy, *, generator, problems, group_offset, **kw) -> tuple[list[Episode], dict]:
    """One shard of a sharded rollout (what a worker runs): unscored episodes and their stats."""
    return rollout(policy, problems, generator=generator, group_offset=group_offset, rewards=None, **kw)


def _sharded_rollout(workers, policy, problems, *, task, samples, sampling, generator, rewards, max_turns,
                     group_offset) -> tuple[list[Episode], dict]:
    """:func:`rollout` split over ``workers``' shards (see :mod:`warmstart.rollout.workers`): the same
    episodes, in the same order and with the same group ids, whatever the backend or worker count."""
    t0 = time.time()
    gens = shard_generators(generator, workers.shards)
    parts = [(r, g) for r, g in zip(split_evenly(len(problems), workers.shards), gens) if len(r)]
    common = {"task": task, "samples": samples, "sampling": sampling, "max_turns": max_turns}
    shards = [{"problems": problems[r.start:r.stop], "group_offset": group_offset + r.start} for r, _ in parts]
    results = workers.map(policy, _rollout_shard, common, shards, [g for _, g in parts])
    episodes = [e for eps, _ in results for e in eps]
    dt = time.time() - t0  # wall time of the whole (parallel) collection, transfers included
    ntok = sum(st["sampled_tokens"] for _, st in results)
    _score(episodes, rewards)
    return episodes, {"sample_time_s": dt, "sampled_tokens": ntok, "sample_tokens_per_s": ntok / max(dt, 1e-9)}
