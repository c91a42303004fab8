"""Single-turn rollouts: problems in, scored episodes out."""

from __future__ import annotations

import time

import torch

from warmstart.episode import Episode
from warmstart.tasks.base import Problem


def rollout(
    policy,
    problems: list[Problem],
    samples_per_problem: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    rewards=None,
    batch_size: int | None = None,
    group_offset: int = 0,
) -> tuple[list[Episode], dict]:
    """Sample ``samples_per_problem`` completions of each problem (one group per problem), score
    them with ``rewards`` (a RewardSet) when given. Returns episodes and timing stats."""
    prompt_ids = [policy.encode_prompt(p.prompt) for p in problems]
    flat = [ids for ids in prompt_ids for _ in range(samples_per_problem)]
    t0 = time.time()
    out = policy.sample(flat, max_new_tokens, temperature=temperature, top_p=top_p, generator=generator, batch_size=batch_size)
    dt = time.time() - t0
    episodes = []
    for i, (ids, lps) in enumerate(zip(out.ids, out.logprobs)):
        prob = problems[i // samples_per_problem]
        e = Episode(prompt=prob.prompt, prompt_ids=flat[i], group=group_offset + i // samples_per_problem,
                    info={"answer": prob.answer, "finished": out.finished[i], **prob.info})
        e.add_turn(ids, lps, policy.decode(ids))
        episodes.append(e)
    if rewards is not None and len(rewards):
        rewards.score(episodes)
    ntok = sum(len(x) for x in out.ids)
    return episodes, {"sample_time_s": dt, "sampled_tokens": ntok, "sample_tokens_per_s": ntok / max(dt, 1e-9)}
