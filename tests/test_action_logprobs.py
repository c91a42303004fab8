"""The fast training log-probs equal the plain full-logits path: the chunked LM head at action
positions (values and gradients), and prompt-shared forwards for single-turn groups and multi-turn
episodes that share a first turn (loss and every parameter's gradient)."""

import random

import pytest
import torch

from warmstart.episode import Episode, collate
from warmstart.functional import entropy_from_logits, head_logprobs, token_logprobs
from warmstart.learn.grpo import GRPOConfig, policy_gradient_loss
from warmstart.policies.action_logprobs import action_logprobs, shared_prefixes, supports_action_logprobs
from warmstart.policies.lm import LMPolicyConfig, make_lm_policy

ATOL = 2e-5


def test_head_logprobs_equals_full_head_values_and_gradients():
    torch.manual_seed(0)
    N, H, V = 37, 16, 50
    h = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True)
    t = torch.randint(V, (N,))
    g = torch.randn(N)
    full = token_logprobs(torch.nn.functional.linear(h, w, b), t, 0.7)
    ent_full = entropy_from_logits(torch.nn.functional.linear(h, w, b) / 0.7)
    grads_full = torch.autograd.grad((full * g).sum(), (h, w, b))
    # 10 positions a chunk (4 chunks, checkpointed) and one chunk: the same numbers
    for elems in (10 * V, 10**9):
        lp, ent = head_logprobs(h, w, b, t, 0.7, with_entropy=True, chunk_elements=elems)
        assert torch.allclose(lp, full, atol=ATOL) and torch.allclose(ent, ent_full, atol=ATOL)
        assert not ent.requires_grad
        for a, c in zip(torch.autograd.grad((lp * g).sum(), (h, w, b)), grads_full):
            assert torch.allclose(a, c, atol=ATOL)


def test_head_logprobs_by_hand():
    # one position, H = 1, V = 2: logits (1, -1) -> log p(token 0) = 1 - log(e + 1/e)
    lp = head_logprobs(torch.ones(1, 1), torch.tensor([[1.0], [-1.0]]), None, torch.tensor([0]))
    assert abs(float(lp) - (1 - torch.log(torch.tensor(2.718281828 + 1 / 2.718281828)))) < 1e-6


def tiny_policy(share=True):
    # GQA (4 query heads, 2 key/value heads), as SmolLM2
    cfg = LMPolicyConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, max_position=96, share_prompt=share)
    return make_lm_policy(cfg, seed=0)


def group_episodes(policy, rng, prompts, G, multi_turn=False):
    """G episodes per prompt with random completions (multi-turn: turn, environment reply, turn)."""
    V = len(policy.tokenizer)
    out = []
    for gi, p in enumerate(prompts):
        ids = policy.encode_prompt(p)
        for _ in range(G):
            e = Episode(prompt=p, prompt_ids=ids, group=gi)
            n = rng.randint(1, 9)
            e.add_turn([rng.randrange(3, V) for _ in range(n)], [-1.0 - 0.1 * rng.random() for _ in range(n)])
            if multi_turn:
                e.add_env([rng.randrange(3, V) for _ in range(rng.randint(1, 4))])
                m = rng.randint(1, 5)
                e.add_turn([rng.randrange(3, V) for _ in range(m)], [-1.2] * m)
            e.reward = rng.random()
            out.append(e)
    return out


class _FullLogits:
    """The plain path: the same policy with ``action_mask`` ignored (full logits everywhere)."""

    def __init__(self, policy):
        self.policy = policy

    def forward_logprobs(self, input_ids, attention_mask, temperature=1.0, with_entropy=False, action_mask=None):
        return self.policy.forward_logprobs(input_ids, attention_mask, temperature, with_entropy)


def loss_and_grads(policy, batch, cfg):
    policy_like = policy if not isinstance(policy, _FullLogits) else policy.policy
    policy_like.model.zero_grad(set_to_none=True)
    adv = torch.linspace(-1, 1, batch.input_ids.shape[0]).unsqueeze(1).expand_as(batch.old_logprobs)
    terms = policy_gradient_loss(policy, batch, adv, cfg)
    terms["loss"].backward()
    return terms, {n: p.grad.clone() for n, p in policy_like.model.named_parameters()}


@pytest.mark.parametrize("multi_turn", [False, True])
def test_prompt_shared_grpo_loss_and_gradients_equal_unshared(multi_turn):
    policy = tiny_policy()
    rng = random.Random(1)
    # 3 groups of 4, prompts of different lengths (right padding, prefixes of different lengths)
    eps = group_episodes(policy, rng, ["1+2*3", "4*5+6+7+8", "9"], 4, multi_turn)
    batch = collate(eps, policy.pad_id)
    rows, L, inv = shared_prefixes(batch.input_ids, batch.action_mask)
    assert inv.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # one prefix per group
    assert L.tolist()[::4] == [len(eps[i].prompt_ids) for i in (0, 4, 8)]
    cfg = GRPOConfig(kind="grpo", temperature=0.9, mu=2)
    plain, g_plain = loss_and_grads(_FullLogits(policy), batch, cfg)
    for share in (True, False):
        policy.share_prefix = share
        fast, g_fast = loss_and_grads(policy, batch, cfg)
        for k in ("loss", "entropy", "ratio", "approx_kl"):
            assert torch.allclose(fast[k], plain[k], atol=ATOL), (share, k, fast[k], plain[k])
        for n in g_plain:
            assert torch.allclose(g_fast[n], g_plain[n], atol=ATOL, rtol=1e-4), (share, n)


def test_action_logprobs_values_at_action_positions_only():
    policy = tiny_policy()
    eps = group_episodes(policy, random.Random(2), ["12+3", "7"], 3, multi_turn=True)
    # a row with no action at all is scored nowhere and does not break the batch
    eps.append(Episode(prompt="5", prompt_ids=policy.encode_prompt("5")))
    batch = collate(eps, policy.pad_id)
    with torch.no_grad():
        full = policy.forward_logprobs(batch.input_ids, batch.attention_mask, 1.0)
        fast = action_logprobs(policy.model, batch.input_ids, batch.attention_mask, batch.action_mask)
    m = batch.action_mask
    assert torch.allclose(fast[m], full[m], atol=ATOL)
    assert (fast[~m] == 0).all()


def test_models_with_transformed_logits_use_the_plain_path():
    policy = tiny_policy()
    assert supports_action_logprobs(policy.model)
    policy.model.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits are not just the head
    assert not supports_action_logprobs(policy.model)


def test_gradient_checkpointing_falls_back_to_one_forward():
    # HF turns the key/value cache off under gradient checkpointing: rows then run on their own
    policy = tiny_policy()
    batch = collate(group_episodes(policy, random.Random(3), ["1+2", "3*4"], 2), policy.pad_id)
    with torch.no_grad():
        want = policy.forward_logprobs(batch.input_ids, batch.attention_mask)
    (getattr(policy.model, "activation_checkpointing_enable", None) or policy.model.gradient_checkpointing_enable)()
    policy.model.train()
    got = policy.forward_logprobs(batch.input_ids, batch.attention_mask, action_mask=batch.action_mask)
    m = batch.action_mask
    assert torch.allclose(got[m], want[m], atol=ATOL)
