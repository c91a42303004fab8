"""Images added mid-episode (a tool's output joins the conversation as img_2, img_3, ...): the one
rollout appends them to the episode and their placeholder tokens to the environment tokens (no
loss), the VLM encodes them when sampling the next turn and when training -- token-in, token-out."""

import numpy as np
import pytest
import torch

from warmstart.episode import Episode, collate
from warmstart.errors import ConfigError
from warmstart.policies.vlm import VLMPolicy, build_tiny_vlm
from warmstart.rollout import Sampling, rollout
from warmstart.tasks.base import Problem, TurnResult
from warmstart.tools import next_image_id

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, image_size=16, patch_size=8, vision_hidden=16, vision_layers=1,
            vision_heads=2, max_position=256)


def picture(seed, h=20, w=40):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


class CropTask:
    """Each turn but the last is answered with a crop of the episode's latest image (a zoom tool)."""

    max_turns = 3
    max_new_tokens = 6

    def respond(self, episode: Episode, turn: int) -> TurnResult:
        if turn + 1 >= self.max_turns:
            return TurnResult(rewards={"r": 1.0}, done=True)
        last = np.asarray(episode.images[-1]) if episode.images else picture(0)
        crop = last[: max(2, last.shape[0] // 2), : max(2, last.shape[1] // 2)]
        return TurnResult(message=f"\nOBSERVATION: {next_image_id(episode.images)}\n", role="tool", images=[crop])


def _policy(seed=0) -> VLMPolicy:
    torch.manual_seed(seed)
    return VLMPolicy(*build_tiny_vlm(**TINY))


@pytest.mark.slow  # ~7 s on a loaded core (two VLM rollouts and a scoring pass)
def test_mid_episode_images_train_on_exactly_the_sampled_logprobs():
    pol = _policy(1)
    n_img = pol.model.config.image_seq_length
    probs = [Problem("what is shown?", "x", images=[picture(1)]), Problem("and here?", "y", images=[picture(2, 24, 24)])]
    eps, _ = rollout(pol, probs, task=CropTask(), samples=2, sampling=Sampling(max_new_tokens=6, temperature=1.0),
                     generator=torch.Generator().manual_seed(0))
    for e in eps:
        assert len(e.turns) == 3 and len(e.images) == 3  # the prompt's image + one per tool answer
        env = [t for t, m in zip(e.ids, e.action_mask) if not m]
        assert env.count(pol.image_token_id) == 2 * n_img  # the placeholders are environment tokens
        assert pol.image_token_id not in [t for t, m in zip(e.ids, e.action_mask) if m]
    # the samples of one group started from one list of prompt images: appending never leaks across
    assert eps[0].images[0] is eps[1].images[0] and eps[0].images is not eps[1].images
    assert not np.array_equal(np.asarray(eps[0].images[2]), np.asarray(eps[2].images[2]))

    batch = collate(eps, pol.pad_id)
    assert batch.images is not None and [len(r) for r in batch.images] == [3, 3, 3, 3]
    pol.model.train()  # as the learner runs it (dropout is 0 in the tiny model)
    lp = pol.forward_logprobs(batch.input_ids, batch.attention_mask, images=batch.images)  # (B, T-1)
    mask = batch.action_mask
    assert int(mask.sum()) == sum(sum(e.action_mask) for e in eps)
    assert torch.allclose(lp[mask], batch.old_logprobs[mask], atol=1e-4)
    # the same ids scored without the tool images differ: the later turns did read them
    no_tool_images = [r[:1] for r in batch.images]
    ids = batch.input_ids.clone()
    ids[ids == pol.image_token_id] = pol.pad_id
    for b, e in enumerate(eps):
        ids[b, : len(e.prompt_ids)] = torch.tensor(e.prompt_ids)
    lp2 = pol.forward_logprobs(ids, batch.attention_mask, images=no_tool_images)
    later = mask & (batch.turn_index > 0)
    assert not torch.allclose(lp2[later], lp[later], atol=1e-3)


def test_an_image_for_a_text_policy_is_a_clear_error():
    from warmstart.policies.lm import LMPolicyConfig, make_lm_policy

    pol = make_lm_policy(LMPolicyConfig(hidden_size=16, num_layers=1, num_heads=2, max_position=128))
    with pytest.raises(ConfigError, match="reads text only"):
        rollout(pol, [Problem("q", "a")], task=CropTask(), sampling=Sampling(max_new_tokens=3),
                generator=torch.Generator().manual_seed(0))


def test_qwen2_vl_chat_template_wraps_a_tool_image(tmp_path):
    from tests.test_vlm import _tiny_qwen2_vl

    _tiny_qwen2_vl(tmp_path)
    pol = VLMPolicy.from_pretrained(tmp_path)
    ids = pol.encode_message("OBSERVATION: img_2", "tool", closed=True, images=[picture(3, 32, 32)])
    text = pol.tokenizer.decode(ids)
    # the template ends a turn with <|im_end|>, not EOS: it closes the sampled turn, then the tool's turn
    assert text.startswith("<|im_end|>\n<|im_start|>tool\nOBSERVATION: img_2<|vision_start|><|image_pad|>")
    assert text.endswith("<|vision_end|><|im_end|>\n<|im_start|>assistant\n")
    # a 32x32 image at patch 8, merge 2: 4x4 patches -> 4 tokens
    assert ids.count(pol.image_token_id) == 4
    eps, _ = rollout(pol, [Problem("q?", "a", images=[picture(4, 32, 32)])], task=CropTask(), samples=2,
                     sampling=Sampling(max_new_tokens=4, temperature=1.0), generator=torch.Generator().manual_seed(1))
    batch = collate(eps, pol.pad_id)
    lp = pol.forward_logprobs(batch.input_ids, batch.attention_mask, images=batch.images)
    assert all(len(e.images) == 3 for e in eps)
    assert torch.allclose(lp[batch.action_mask], batch.old_logprobs[batch.action_mask], atol=1e-4)
