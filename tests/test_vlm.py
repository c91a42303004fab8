"""Vision-language policies: HF round trip, the image-prefill KV sampler against the HF model, image
tokens never generated nor trained on, clear image errors, Qwen2-VL from a local path."""

import numpy as np
import pytest
import torch

from warmstart.errors import DataError
from warmstart.policies.vlm import VLMPolicy, build_tiny_vlm, load_image

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, image_size=16, patch_size=8, vision_hidden=16, vision_layers=1,
            vision_heads=2, max_position=128)


def tiny_vlm(seed=0, **kw):
    torch.manual_seed(seed)
    m, proc = build_tiny_vlm(**{**TINY, **kw})
    return VLMPolicy(m, proc)


def picture(seed, h=20, w=40):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def hf_logits(pol, ids, images):
    """Logits of the HF model itself (pixel_values through its own forward), image token masked."""
    ids = torch.tensor([ids])
    extra = {}
    if images:
        extra["pixel_values"] = torch.cat([pol.pixel_inputs(im)[1]["pixel_values"] for im in images])
    return pol.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0] + pol.logit_bias


def test_checkpoint_round_trips_through_hf_auto_classes(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    pol = tiny_vlm(1)
    pol.save(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    img = load_image(picture(0))
    inputs = proc(images=[img], text=["<image>1+2="], return_tensors="pt")
    assert int((inputs["input_ids"] == pol.image_token_id).sum()) == (TINY["image_size"] // TINY["patch_size"]) ** 2
    pol.model.eval()
    assert torch.allclose(model(**inputs).logits, pol.model(**inputs).logits, atol=1e-5)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)  # plain transformers generation from an image
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    again = VLMPolicy.from_pretrained(tmp_path)
    assert again.encode_prompt("1+2=", [picture(0)]) == pol.encode_prompt("1+2=", [picture(0)])


def test_prefill_logits_match_hf_with_images_and_left_padding():
    pol = tiny_vlm(2)
    pol.model.eval()
    rows = [[picture(1)], [picture(2)], [], [picture(1), picture(3)]]
    texts = ["a long question here", "b?", "text only, no image", "two images"]
    prompts = [pol.encode_prompt(t, im) for t, im in zip(texts, rows)]
    uniq, idx = pol._distinct(rows)
    assert len(uniq) == 3  # picture(1) is shared by rows 0 and 3
    lg = pol._sampler.prefill_logits_images(prompts, idx, pol.image_features(uniq), pol.image_token_id, pol.pad_id)
    for b, p in enumerate(prompts):
        ref = hf_logits(pol, p, rows[b])
        assert torch.allclose(lg[b, -len(p):], ref, atol=1e-4)


def test_sampled_logprobs_match_the_hf_model_with_an_image():
    pol = tiny_vlm(3)
    pol.model.eval()
    rows = [[picture(4)], [picture(5)], [picture(4)]]
    prompts = [pol.encode_prompt("q1", rows[0]), pol.encode_prompt("another q", rows[1]), pol.encode_prompt("q1", rows[2])]
    out = pol.sample(prompts, 12, temperature=1.0, generator=torch.Generator().manual_seed(0), images=rows)
    for b, p in enumerate(prompts):
        assert len(out.ids[b]) > 0 and pol.image_token_id not in out.ids[b]
        ref = torch.log_softmax(hf_logits(pol, p + out.ids[b], rows[b])[len(p) - 1 : -1], -1)
        ref_lp = ref.gather(-1, torch.tensor(out.ids[b]).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(ref_lp, torch.tensor(out.logprobs[b]), atol=1e-4)


def test_greedy_kv_sampler_equals_hf_generate_fallback():
    pol = tiny_vlm(4)
    rows = [[picture(6)], [picture(7)]]
    prompts = [pol.encode_prompt("x=", rows[0]), pol.encode_prompt("a longer prompt=", rows[1])]
    kv = pol.sample(prompts, 10, temperature=0.0, images=rows)
    sampler, pol._sampler = pol._sampler, None  # force HF generate + scoring pass
    hf = pol.sample(prompts, 10, temperature=0.0, images=rows)
    pol._sampler = sampler
    assert kv.ids == hf.ids
    for a, b in zip(kv.logprobs, hf.logprobs):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


def test_a_group_shares_one_vision_pass():
    pol = tiny_vlm(5)
    calls = []
    h = pol.vision_module().register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    img = picture(8)
    p = pol.encode_prompt("q", [img])
    pol.sample([p] * 8, 4, temperature=1.0, generator=torch.Generator().manual_seed(0), images=[[img]] * 8)
    h.remove()
    assert calls == [1]  # eight samples of one prompt: one image through the vision tower once


def test_image_tokens_are_never_generated_nor_trained_on():
    from warmstart.episode import Episode, collate

    pol = tiny_vlm(6)
    with torch.no_grad():  # make the image token the model's favourite continuation
        pol.model.lm_head.weight[pol.image_token_id] = pol.model.lm_head.weight.abs().max() * 50
    img = picture(9)
    p = pol.encode_prompt("q", [img])
    out = pol.sample([p] * 4, 6, temperature=1.0, generator=torch.Generator().manual_seed(0), images=[[img]] * 4)
    assert all(pol.image_token_id not in ids for ids in out.ids)
    e = Episode(prompt="q", prompt_ids=p)
    e.add_turn(pol.encode("<think>x</think>"), [0.0] * 16)
    batch = collate([e], pol.pad_id)
    targets = batch.input_ids[:, 1:]
    assert int((targets == pol.image_token_id).sum()) == (TINY["image_size"] // TINY["patch_size"]) ** 2  # in the prompt
    assert not bool((batch.action_mask & (targets == pol.image_token_id)).any())  # ... and never carry a loss


def test_missing_or_corrupt_image_is_a_clear_error(tmp_path):
    pol = tiny_vlm(7)
    with pytest.raises(DataError, match=r"sample GunPoint/3.*does not exist"):
        load_image(tmp_path / "nope.png", "sample GunPoint/3")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"sample 7.*bad.png.*could not be read"):
        load_image(bad, "sample 7")
    with pytest.raises(DataError, match="image 0"):
        pol.encode_prompt("q", [tmp_path / "nope.png"])


def test_frozen_vision_encoder_stays_fixed_while_the_rest_learns():
    pol = tiny_vlm(8)
    pol.freeze_vision()
    vision = {n: p.detach().clone() for n, p in pol.vision_module().named_parameters()}
    proj = pol.model.model.multi_modal_projector.linear_1.weight.detach().clone()
    img = picture(10)
    ids = torch.tensor([pol.encode_prompt("q", [img]) + pol.encode("<class>a</class>")])
    opt = torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad], lr=1e-2)
    loss = -pol.forward_logprobs(ids, torch.ones_like(ids), images=[[img]]).mean()
    loss.backward()
    opt.step()
    assert all(torch.equal(vision[n], p) for n, p in pol.vision_module().named_parameters())
    assert not torch.equal(proj, pol.model.model.multi_modal_projector.linear_1.weight)


def _tiny_qwen2_vl(path):
    """A randomly initialised Qwen2-VL (the papers' model class) saved locally with its tokenizer (with the
    vision special tokens and a chat template) and image processor."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from warmstart.policies.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens({"additional_special_tokens": specials})
    sid = {s: tok.convert_tokens_to_ids(s) for s in specials}
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=8, spatial_merge_size=2,
                           temporal_patch_size=2, in_channels=3),
        image_token_id=sid["<|image_pad|>"], video_token_id=sid["<|video_pad|>"],
        vision_start_token_id=sid["<|vision_start|>"], vision_end_token_id=sid["<|vision_end|>"], tie_word_embeddings=True)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=48 * 48, patch_size=8, merge_size=2,
                             temporal_patch_size=2).save_pretrained(path)


def test_qwen2_vl_class_from_a_local_path_samples_with_matching_logprobs(tmp_path):
    _tiny_qwen2_vl(tmp_path)
    pol = VLMPolicy.from_pretrained(tmp_path)
    assert type(pol.model).__name__ == "Qwen2VLForConditionalGeneration" and pol._sampler is None and pol.chat
    rows = [[picture(11, 32, 64)], [picture(12, 40, 40)]]
    prompts = [pol.encode_prompt("which class?", rows[0]), pol.encode_prompt("q", rows[1])]
    out = pol.sample(prompts, 6, temperature=1.0, generator=torch.Generator().manual_seed(0), images=rows)
    pol.model.eval()
    for b, p in enumerate(prompts):
        ids = torch.tensor([p + out.ids[b]])
        lp = pol.forward_logprobs(ids, torch.ones_like(ids), images=[rows[b]])[0, len(p) - 1 :]
        assert torch.allclose(lp, torch.tensor(out.logprobs[b]), atol=1e-4)


def test_vlm_prompt_shared_training_equals_the_plain_path_with_images():
    # GRPO groups whose prompts carry images: the fast path (head at action positions, each group's
    # prompt -- image tokens included -- forwarded once) gives the plain full-logits path's loss and
    # every parameter's gradient, vision tower and projector included. Groups 0 and 1 have the same
    # text with different images: they must not share a prefix.
    import random

    from warmstart.episode import Episode, collate
    from warmstart.learn.grpo import GRPOConfig, policy_gradient_loss
    from warmstart.policies.action_logprobs import shared_prefixes

    pol = tiny_vlm(7)
    rng = random.Random(0)
    V = len(pol.tokenizer) - 1  # the image token is last; completions never hold it
    groups = [("what is it?", [picture(10)]), ("what is it?", [picture(11)]), ("two", [picture(10), picture(12)]), ("none", [])]
    eps = []
    for gi, (text, imgs) in enumerate(groups):
        ids = pol.encode_prompt(text, imgs)
        for _ in range(3):
            e = Episode(prompt=text, prompt_ids=ids, group=gi, images=list(imgs))
            n = rng.randint(1, 6)
            e.add_turn([rng.randrange(3, V) for _ in range(n)], [-1.0 - 0.1 * rng.random() for _ in range(n)])
            e.reward = rng.random()
            eps.append(e)
    batch = collate(eps, pol.pad_id)
    _, key = pol._embeds(batch.input_ids, batch.images)
    assert shared_prefixes(key, batch.action_mask)[2].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    cfg = GRPOConfig(kind="grpo", temperature=0.9)
    adv = torch.linspace(-1, 1, len(eps)).unsqueeze(1).expand_as(batch.old_logprobs)

    class Plain:  # the same policy, action_mask ignored: full logits at every position
        def forward_logprobs(self, input_ids, attention_mask, temperature=1.0, with_entropy=False, images=None, action_mask=None):
            return pol.forward_logprobs(input_ids, attention_mask, temperature, with_entropy, images=images)

    results = []
    for who, share in ((Plain(), True), (pol, True), (pol, False)):
        pol.share_prefix = share
        pol.model.zero_grad(set_to_none=True)
        terms = policy_gradient_loss(who, batch, adv, cfg)
        terms["loss"].backward()
        results.append((terms, {n: p.grad.clone() for n, p in pol.model.named_parameters() if p.grad is not None}))
    (plain, g_plain), *fast = results
    assert any("vision" in n for n in g_plain) and any("projector" in n for n in g_plain)
    for got, g_got in fast:
        for k in ("loss", "entropy", "ratio", "approx_kl"):
            assert torch.allclose(got[k], plain[k], atol=2e-5), (k, got[k], plain[k])
        assert g_got.keys() == g_plain.keys()
        for n in g_plain:
            assert torch.allclose(g_got[n], g_plain[n], atol=2e-5, rtol=1e-4), n
