"""The episode type: multi-turn masks, collation, and zero gradient on environment tokens."""

import pytest
import torch

from warmstart.episode import Episode, collate
from warmstart.learn.grpo import GRPOConfig, policy_gradient_loss


def two_turn_episode():
    e = Episode(prompt="q", prompt_ids=[1, 10, 11])
    e.add_turn([20, 21], [-0.5, -0.6], "ab")
    e.add_env([30, 31, 32])  # environment reply: no loss
    e.add_turn([22, 2], [-0.7, -0.1], "c")
    return e


def test_collate_alignment():
    e = two_turn_episode()
    short = Episode(prompt="q", prompt_ids=[1, 12])
    short.add_turn([23], [-0.2], "x")
    b = collate([e, short], pad_id=0, pad_to_multiple=1)
    assert b.input_ids.shape == (2, 10)
    # target position t predicts input t+1: the first policy token (20) sits at input 3 -> target 2
    assert b.action_mask[0].tolist() == [False, False, True, True, False, False, False, True, True]
    assert b.old_logprobs[0, 2].item() == -0.5 and abs(b.old_logprobs[0, 8].item() + 0.1) < 1e-6
    assert b.turn_index[0].tolist() == [-1, -1, 0, 0, -1, -1, -1, 1, 1]
    assert b.action_mask[1].tolist() == [False, True] + [False] * 7
    assert b.attention_mask[1].tolist() == [1, 1, 1] + [0] * 7
    empty = Episode(prompt="q", prompt_ids=[1, 12])  # a row with no interaction: nothing to score
    assert collate([empty, short], pad_id=0, pad_to_multiple=4).action_mask[0].tolist() == [False] * 3
    with pytest.raises(ValueError, match="no prompt tokens"):
        collate([Episode(prompt="", prompt_ids=[])], pad_id=0)


class _LeafPolicy:
    """Stands in for a model: its log-probs are a leaf tensor, so we can read their gradient."""

    def __init__(self, shape):
        self.lp = torch.full(shape, -1.0, requires_grad=True)

    def forward_logprobs(self, input_ids, attention_mask, temperature=1.0, with_entropy=False, action_mask=None):
        return (self.lp, torch.zeros_like(self.lp)) if with_entropy else self.lp


def test_environment_tokens_get_zero_gradient():
    e = two_turn_episode()
    e.reward = 1.0
    other = two_turn_episode()
    other.reward = 0.0
    b = collate([e, other], pad_id=0, pad_to_multiple=1)
    pol = _LeafPolicy(b.old_logprobs.shape)
    adv = torch.tensor([1.0, -1.0]).unsqueeze(1).expand_as(b.old_logprobs)
    ref = torch.full_like(b.old_logprobs, -2.0)
    terms = policy_gradient_loss(pol, b, adv, GRPOConfig(kind="grpo"), kl_coef=0.1, ref_logprobs=ref)
    terms["loss"].backward()
    g = pol.lp.grad
    assert torch.all(g[~b.action_mask] == 0), "environment/prompt/pad tokens must get no gradient"
    assert torch.all(g[b.action_mask] != 0), "every policy token gets a gradient"
    assert set(terms) >= {"loss", "loss_policy", "loss_kl", "kl", "entropy", "clipfrac", "approx_kl"}


def test_check_detects_inconsistency():
    e = Episode(prompt="q", prompt_ids=[1], ids=[2, 3], action_mask=[True], logprobs=[0.0, 0.0])
    try:
        e.check()
    except ValueError as err:
        assert "inconsistent" in str(err)
    else:
        raise AssertionError("check() should fail")


def test_length_buckets_accumulate_to_the_unsplit_gradient(tiny_policy_factory):
    """Micro-batches by length with whole-batch normalisers give the same gradient as one block."""
    from warmstart.episode import length_buckets

    torch.manual_seed(0)
    pol = tiny_policy_factory(seed=0)
    eps = []
    for i, n in enumerate([2, 3, 30, 2, 28, 4]):
        e = Episode(prompt="p", prompt_ids=[1, 5, 6])
        e.add_turn(torch.randint(3, 60, (n,)).tolist(), (-torch.rand(n)).tolist(), "x")
        e.reward, e.group = float(i % 2), i // 3
        eps.append(e)
    for mode in ("sequence", "token", "constant"):
        cfg = GRPOConfig(kind="grpo", loss_aggregation=mode, max_new_tokens=32)
        full = collate(eps, pol.pad_id)
        adv = torch.linspace(-1, 1, len(eps)).unsqueeze(1).expand_as(full.old_logprobs)
        pol.model.zero_grad()
        policy_gradient_loss(pol, full, adv, cfg)["loss"].backward()
        g_full = [p.grad.clone() for p in pol.model.parameters()]
        pol.model.zero_grad()
        n_seqs, n_tok = float(len(eps)), float(full.action_mask.sum())
        buckets = length_buckets([len(e.prompt_ids) + len(e.ids) for e in eps], 3, overhead=0)
        assert len(buckets) > 1
        for b in buckets:
            sub = collate([eps[i] for i in b], pol.pad_id)
            a = torch.linspace(-1, 1, len(eps))[b].unsqueeze(1).expand_as(sub.old_logprobs)
            policy_gradient_loss(pol, sub, a, cfg, num_seqs=n_seqs, num_tokens=n_tok)["loss"].backward()
        for g, p in zip(g_full, pol.model.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-6), mode


def test_episodes_carry_images_and_tensors_and_collate_batches_them():
    a, b = two_turn_episode(), two_turn_episode()
    a.images, b.images = ["img-a"], ["img-b1", "img-b2"]
    a.tensors, b.tensors = {"pixels": torch.zeros(3, 2)}, {"pixels": torch.ones(3, 2)}
    batch = collate([a, b], pad_id=0)
    assert batch.images == [["img-a"], ["img-b1", "img-b2"]]
    assert batch.tensors["pixels"].shape == (2, 3, 2) and batch.tensors["pixels"][1].sum() == 6
    text_only = collate([two_turn_episode()], pad_id=0)
    assert text_only.images is None and text_only.tensors is None


def test_rollout_per_turn_limits_and_stop_strings(tiny_policy_factory):
    from warmstart.rollout import Sampling, rollout
    from warmstart.tasks.base import Problem, TurnResult

    class Twice:
        max_turns, max_new_tokens = 2, 8

        def respond(self, episode, turn):
            return TurnResult(rewards={"r": 1.0}, message="?", done=turn == 1)

    pol = tiny_policy_factory(seed=0)
    probs = [Problem("1+2=", "3"), Problem("4+5=", "9")]
    gen = torch.Generator().manual_seed(0)
    eps, _ = rollout(pol, probs, task=Twice(), samples=3, sampling=Sampling(max_new_tokens=[2, 5]), generator=gen)
    for e in eps:
        (a0, a1), (b0, b1) = e.turns
        assert a1 - a0 <= 2 and b1 - b0 <= 5 and e.reward == 2.0
    assert max(e.turns[1][1] - e.turns[1][0] for e in eps) == 5  # a random tiny model rarely stops early
    # stop strings: a one-character stop ends the turn on it; a longer one is cut after sampling
    out, _ = rollout(pol, probs, samples=4, sampling=Sampling(max_new_tokens=30), generator=torch.Generator().manual_seed(1))
    texts = [e.text for e in out]
    ch = next(c for t in texts for c in t if c.strip())  # some character the model does emit
    stopped, _ = rollout(pol, probs, samples=4, sampling=Sampling(max_new_tokens=30, stop=[ch]),
                         generator=torch.Generator().manual_seed(1))
    for full, cut in zip(texts, (e.text for e in stopped)):
        if ch in full:
            assert cut == full[: full.index(ch) + 1]
    pair = next(t[i:i + 2] for t in texts for i in range(len(t) - 1) if t[i:i + 2].strip() == t[i:i + 2])
    cut2, _ = rollout(pol, probs, samples=4, sampling=Sampling(max_new_tokens=30, stop=[pair]),
                      generator=torch.Generator().manual_seed(1))
    for full, cut in zip(texts, (e.text for e in cut2)):
        if pair in full:
            assert cut == full[: full.index(pair) + 2]
        assert len(cut) <= len(full)
