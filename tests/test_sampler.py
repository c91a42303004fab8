"""The KV-cache sampler against the Hugging Face model it samples from."""

import torch

from warmstart.policies.sampler import hf_sample


def test_prefill_logits_match_hf_with_left_padding(tiny_policy_factory):
    pol = tiny_policy_factory(seed=1)
    m = pol.model.eval()
    prompts = [pol.encode_prompt("3+2*5="), pol.encode_prompt("1+1+1+1*9="), pol.encode_prompt("7=")]
    lg = pol._sampler.prefill_logits(prompts, pol.pad_id)
    for b, p in enumerate(prompts):
        ref = m(input_ids=torch.tensor([p])).logits[0]
        assert torch.allclose(lg[b, -len(p):], ref, atol=1e-4)


def test_sampled_logprobs_match_teacher_forced_hf(tiny_policy_factory):
    pol = tiny_policy_factory(seed=2)
    m = pol.model.eval()
    prompts = [pol.encode_prompt("12+3="), pol.encode_prompt("4=")]
    out = pol.sample(prompts, 12, temperature=1.0, generator=torch.Generator().manual_seed(0))
    for b, p in enumerate(prompts):
        assert len(out.ids[b]) > 0
        seq = torch.tensor([p + out.ids[b]])
        ref = torch.log_softmax(m(input_ids=seq).logits[0, len(p) - 1 : -1], -1)
        ref_lp = ref.gather(-1, torch.tensor(out.ids[b]).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(ref_lp, torch.tensor(out.logprobs[b]), atol=1e-4)


def test_greedy_is_independent_of_batch_padding_and_matches_hf_generate(tiny_policy_factory):
    pol = tiny_policy_factory(seed=3)
    a = pol.encode_prompt("5*5+1=")
    long = pol.encode_prompt("9+9+9+9+9+9+9+9=")
    alone = pol.sample([a], 10, temperature=0.0)
    batched = pol.sample([long, a], 10, temperature=0.0)
    assert alone.ids[0] == batched.ids[1]
    ref = hf_sample(pol.model, [a], 10, pol.eos_id, pol.pad_id, temperature=0.0)
    assert ref.ids[0] == alone.ids[0]


def test_stops_at_eos_and_respects_limit(tiny_policy_factory):
    pol = tiny_policy_factory(seed=4)
    # make EOS overwhelmingly likely after the prompt
    with torch.no_grad():
        pol.model.lm_head.weight.data[pol.eos_id] += 0.0
        bias = torch.zeros(pol.model.config.vocab_size)
        bias[pol.eos_id] = 50.0
    orig = pol.model.lm_head.forward
    pol.model.lm_head.forward = lambda x: orig(x) + bias
    out = pol.sample([pol.encode_prompt("1=")] * 3, 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert all(ids == [pol.eos_id] for ids in out.ids) and all(out.finished)
    pol.model.lm_head.forward = orig
    out = pol.sample([pol.encode_prompt("1=")], 5, temperature=1.0, generator=torch.Generator().manual_seed(0),
                     stop_ids=[])
    assert len(out.ids[0]) <= 5


def test_top_p_restricts_to_the_nucleus(tiny_policy_factory):
    pol = tiny_policy_factory(seed=5)
    from warmstart.policies.sampler import LlamaKVSampler

    logits = torch.tensor([[5.0, 4.9, -5.0, -5.0]]).repeat(200, 1)
    tok, _ = LlamaKVSampler._pick(logits, 1.0, 0.5, torch.Generator().manual_seed(0))
    assert set(tok.tolist()) <= {0}  # first token alone holds >= 0.5 of the mass
    tok, _ = LlamaKVSampler._pick(logits, 1.0, 0.9, torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {0, 1}


def test_seeded_sampling_is_reproducible(tiny_policy_factory):
    pol = tiny_policy_factory(seed=6)
    p = [pol.encode_prompt("2+2=")] * 4
    a = pol.sample(p, 8, generator=torch.Generator().manual_seed(7))
    b = pol.sample(p, 8, generator=torch.Generator().manual_seed(7))
    assert a.ids == b.ids and a.logprobs == b.logprobs


def test_batched_encoding_equals_text_by_text(tiny_policy_factory):
    """``encode_prompts``/``encode_batch`` (one tokenizer call for a dataset) give the ids that
    ``encode_prompt``/``encode`` give one text at a time, and ``demo_episodes`` uses them."""
    from warmstart.learn.supervised import demo_episodes

    pol = tiny_policy_factory(seed=0)
    texts = ["3+2*5=", "", "7=  #1\n", "1+1+1+1*9=;worked"]
    assert pol.encode_prompts(texts) == [pol.encode_prompt(t) for t in texts]
    assert pol.encode_batch(texts) == [pol.encode(t) for t in texts]
    assert pol.encode_batch([]) == [] and pol.encode_prompts([]) == []
    eps = demo_episodes(pol, [("3+2=", "5"), ("9*9=", "1#1")])
    assert [e.prompt_ids for e in eps] == [pol.encode_prompt("3+2="), pol.encode_prompt("9*9=")]
    assert [e.ids for e in eps] == [pol.encode("5") + [pol.eos_id], pol.encode("1#1") + [pol.eos_id]]
