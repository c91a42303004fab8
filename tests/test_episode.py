"""The episode type: multi-turn masks, collation, and zero gradient on environment tokens."""

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


class _LeafPolicy:
    """Stands in for a model: its log-probs are a leaf tensor, so we can read their gradient."""

    def __init__(self, shape):
        self.lp = torch.full(shape, -1.0, requires_grad=True)

    def forward_logprobs(self, input_ids, attention_mask, temperature=1.0, with_entropy=False):
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
