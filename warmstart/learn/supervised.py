"""Supervised updates every learner that imitates episodes shares: SFT, behaviour cloning of
demonstrations, expert iteration, STaR / Pair-SFT."""

from __future__ import annotations

import time

import torch

from warmstart.episode import Episode, collate, length_buckets
from warmstart.learn.optim import guarded_step


def demo_episodes(policy, pairs: list[tuple[str, str]]) -> list[Episode]:
    """Turn (prompt, completion) pairs into episodes whose completion (+EOS) is the policy's turn."""
    eos = [policy.eos_id] if policy.eos_id is not None else []
    prompt_ids = policy.encode_prompts([p for p, _ in pairs])  # batched: one tokenizer call for a whole dataset
    completion_ids = policy.encode_batch([c for _, c in pairs])
    eps = []
    for (prompt, completion), p_ids, c_ids in zip(pairs, prompt_ids, completion_ids):
        e = Episode(prompt=prompt, prompt_ids=p_ids)
        ids = c_ids + eos
        e.add_turn(ids, [0.0] * len(ids), completion)
        eps.append(e)
    return eps


def sft_update(policy, opt, episodes: list[Episode], max_grad_norm: float = 1.0, max_buckets: int = 4) -> dict:
    """One optimizer step of next-token cross-entropy on the policy tokens of ``episodes`` (prompt
    and environment tokens are context only). Used by every learner that imitates episodes: SFT,
    expert iteration, STaR / Pair-SFT. The batch runs as length-bucketed micro-batches whose losses
    are normalised by the whole batch's token count, so the gradient equals the unsplit one. A
    non-finite loss or gradient skips the step (``skipped_updates``: 1)."""
    t0 = time.time()
    policy.model.train()
    opt.zero_grad(set_to_none=True)
    n_tok = sum(sum(e.action_mask) for e in episodes)
    total, ntok = 0.0, 0
    for bucket in length_buckets([len(e.prompt_ids) + len(e.ids) for e in episodes], max_buckets):
        batch = collate([episodes[i] for i in bucket], policy.pad_id)
        kw = {"images": batch.images} if batch.images is not None else {}
        lp = policy.forward_logprobs(batch.input_ids, batch.attention_mask, action_mask=batch.action_mask, **kw)  # (b, T-1)
        loss = -(lp * batch.action_mask).sum() / max(n_tok, 1)
        loss.backward()
        total += loss.item()
        ntok += int(batch.attention_mask.sum())
    gnorm, skipped = guarded_step(opt, policy.model.parameters(), max_grad_norm, total)
    dt = time.time() - t0
    return {"loss": total, "grad_norm": gnorm, "tokens": ntok, "tokens_per_s": ntok / max(dt, 1e-9),
            "updates": 0 if skipped else 1, "skipped_updates": int(skipped)}
