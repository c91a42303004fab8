"""Vision-language policies: a tiny Llava built from a config, or a Qwen2-VL-class model from a path.

**The tiny VLM** is ``LlavaForConditionalGeneration``: a SigLIP vision tower (a plain ViT over
square patches, no CLS token), Llava's two-layer projector, and the same tiny Llama and character
tokenizer as the text policies, plus one ``<image>`` token. Llava was chosen over Qwen2-VL and
Idefics3 because its config is the cleanest for a tiny model -- three small sub-configs, a fixed
number of image tokens per image, no image splitting -- and because its language model *is* a
``LlamaModel``, so the KV-cache sampler of the text policies runs it unchanged after an image
prefill. Checkpoints load with ``AutoModelForImageTextToText`` / ``AutoProcessor``.

**Real VLMs** (``from_pretrained``): any local ``AutoModelForImageTextToText`` checkpoint with its
processor -- Qwen2-VL / Qwen2.5-VL are what the papers train. Their multimodal RoPE (3-D positions)
is outside the KV sampler, so they sample with HF ``generate`` plus one scoring pass (the fallback).

**Images** travel per row as a list (PIL images, ``(H, W, 3)`` uint8 arrays, or file paths). The
processor turns each into pixel tensors once (cached by content); a batch computes the features of
each *distinct* image once, so the G samples of a GRPO group share one vision forward. The image
token is never generated (its logit gets a -1e9 bias in sampling *and* in the learner's log-probs, so the
two agree) and never trained on (it only ever appears in prompts, which carry no loss).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import DataError, WarmstartError
from warmstart.functional import logprobs_from_logits
from warmstart.policies import POLICY_FILE
from warmstart.policies.action_logprobs import DecoderPasses, action_logprobs, supports_action_logprobs
from warmstart.policies.lm import PROBE, LMPolicy, message_suffix
from warmstart.policies.sampler import LlamaKVSampler, Samples, cut_at_stops, left_pad, sample_in_chunks
from warmstart.registry import POLICIES

IMAGE_TOKEN = "<image>"
PROJECTOR_INIT_SCALE = 5.0  # see build_tiny_vlm


# --------------------------------------------------------------------------------------- images


def load_image(image: Any, where: str = "image"):
    """A PIL RGB image from a PIL image, an (H, W[, 3|4]) array or a file path; a missing or unreadable
    file is a :class:`DataError` naming ``where`` (the sample) and the path."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise DataError(f"{where}: an image array must be (H, W), (H, W, 3) or (H, W, 4), not {arr.shape}.")
        return Image.fromarray(arr[..., :3])
    if isinstance(image, (str, Path)):
        p = Path(image)
        if not p.is_file():
            raise DataError(f"{where}: image file {str(p)!r} does not exist.")
        try:
            with Image.open(p) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{where}: image file {str(p)!r} could not be read as an image ({e}).") from None
    raise DataError(f"{where}: an image must be a PIL image, a numpy array or a file path, not {type(image).__name__}.")


def image_key(image) -> str:
    """Content hash of a PIL image (size + pixels): equal images share one processor/vision pass."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.size, image.mode)).encode())
    h.update(image.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- tiny Llava


def build_tiny_vlm(
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position: int = 512,
    image_size: int = 48,
    patch_size: int = 8,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    vision_heads: int = 4,
    chars: str | None = None,
):
    """A tiny Llava (SigLIP ViT + projector + Llama) and its ``LlavaProcessor``, from a config; nothing
    is downloaded. ``(image_size / patch_size)^2`` tokens stand for each image."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, SiglipVisionConfig
    from transformers.models.siglip import SiglipImageProcessorPil

    from warmstart.policies.tokenizer import build_char_tokenizer

    if hidden_size % num_heads or vision_hidden % vision_heads:
        raise WarmstartError(f"policy: hidden_size ({hidden_size}) and vision_hidden ({vision_hidden}) must be divisible "
                             f"by num_heads ({num_heads}) and vision_heads ({vision_heads}).")
    if image_size % patch_size:
        raise WarmstartError(f"policy.image_size ({image_size}) must be a multiple of policy.patch_size ({patch_size}).")
    tok = build_char_tokenizer(chars)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    n_img = (image_size // patch_size) ** 2
    vc = SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=vision_layers,
                            num_attention_heads=vision_heads, image_size=image_size, patch_size=patch_size,
                            num_channels=3, vision_use_head=False)
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
                     num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                     max_position_embeddings=max_position, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_id, image_seq_length=n_img,
                      vision_feature_select_strategy="full", vision_feature_layer=-1, projector_hidden_act="gelu",
                      tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(cfg)
    with torch.no_grad():
        # At HF's init (std 0.02) the projected image features start ~3x smaller than the token
        # embeddings and a tiny language model is slow to start reading them: on a rise-vs-fall plot
        # task SFT needed ~280 steps before accuracy left 50%; with both projector layers x5 it needs ~150.
        for lin in (model.model.multi_modal_projector.linear_1, model.model.multi_modal_projector.linear_2):
            lin.weight.mul_(PROJECTOR_INIT_SCALE)
    ip = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size, vision_feature_select_strategy="full",
                          num_additional_image_tokens=0, image_token=IMAGE_TOKEN)
    return model, proc


def is_llava_llama(model) -> bool:
    """A Llava whose language model the Llama KV sampler can run (default RoPE, SiLU MLP)."""
    from warmstart.policies.sampler import supports_kv_sampler

    cfg = model.config
    return cfg.model_type == "llava" and supports_kv_sampler(SimpleNamespace(config=cfg.text_config))


# ------------------------------------------------------------------------------------ KV sampler


class _MaskedHead:
    """``lm_head`` with a fixed additive bias (-inf on tokens the policy may not produce)."""

    def __init__(self, head, bias: torch.Tensor):
        self.head, self.bias = head, bias

    @property
    def weight(self):
        return self.head.weight

    def __call__(self, x):
        return self.head(x) + self.bias


class VLMKVSampler(LlamaKVSampler):
    """The Llama KV-cache sampler on a Llava's language model, after an image prefill.

    Image slots in a prompt are written as negative ids ``-(j + 1)`` for distinct image ``j`` of the
    batch: the sampler's prompt deduplication then keys on (text, image) -- a GRPO group shares one
    prefill, two series with the same question do not -- and the embedding hook below writes image
    ``j``'s projected features into those slots. Everything after the prefill is the text sampler."""

    def __init__(self, model, logit_bias: torch.Tensor):
        self.vlm = model
        self.n_img = model.config.image_seq_length
        self._feats: torch.Tensor | None = None  # (U, n_img, H) features of this call's distinct images
        lm = model.model.language_model
        view = SimpleNamespace(config=model.config.text_config,
                               model=SimpleNamespace(layers=lm.layers, norm=lm.norm, embed_tokens=self._embed),
                               lm_head=_MaskedHead(model.lm_head, logit_bias))
        super().__init__(view)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.vlm.model.language_model.embed_tokens(ids.clamp(min=0))  # (B, S, H)
        slots = ids < 0
        if slots.any():
            img = (-ids[slots] - 1).view(-1, self.n_img)[:, 0]  # image index of each run of n_img slots, row-major
            x = x.masked_scatter(slots.unsqueeze(-1), self._feats[img].reshape(-1, x.shape[-1]).to(x.dtype))
        return x

    def mark_images(self, prompts: list[list[int]], image_rows: list[list[int]], image_token_id: int) -> list[list[int]]:
        """Prompts with the k-th run of image tokens of row b replaced by ``-(image_rows[b][k] + 1)``."""
        out = []
        for b, p in enumerate(prompts):
            row, seen = list(p), 0
            for i, t in enumerate(p):
                if t == image_token_id:
                    k = seen // self.n_img
                    if k >= len(image_rows[b]):
                        raise DataError(f"prompt {b} has more image tokens than images ({len(image_rows[b])} given).")
                    row[i] = -(image_rows[b][k] + 1)
                    seen += 1
            if seen != self.n_img * len(image_rows[b]):
                raise DataError(f"prompt {b} has {seen} image tokens for {len(image_rows[b])} images "
                                f"({self.n_img} tokens each): encode prompts with the policy's encode_prompt.")
            out.append(row)
        return out

    @torch.no_grad()
    def sample_images(self, prompts, image_rows, features, image_token_id, **kw) -> Samples:
        """Sample with ``features`` (U, n_img, H) of the batch's distinct images; ``image_rows[b]``
        lists the indices (into ``features``) of row b's images in prompt order."""
        marked = self.mark_images(prompts, image_rows, image_token_id)
        self._feats = features
        try:
            return self.sample(marked, **kw)
        finally:
            self._feats = None

    @torch.no_grad()
    def prefill_logits_images(self, prompts, image_rows, features, image_token_id, pad_id: int = 0) -> torch.Tensor:
        """Prefill logits (B, P, V) with images (tests compare them with the HF model)."""
        marked = self.mark_images(prompts, image_rows, image_token_id)
        self._feats = features
        try:
            return self.prefill_logits(marked, pad_id)
        finally:
            self._feats = None


# ------------------------------------------------------------------------------------- processor


class SplitProcessor:
    """A processor assembled from a checkpoint's tokenizer and image processor, for when
    ``AutoProcessor`` cannot build the model's own (Qwen2-VL's also needs a video processor, which
    needs torchvision). It does what the VLM processors do for images: each image placeholder in
    the text becomes as many image tokens as the image yields -- ``prod(grid_thw) / merge_size^2``
    for Qwen2-VL-style processors, the config's ``image_seq_length`` otherwise."""

    def __init__(self, tokenizer, image_processor, image_token: str, tokens_per_image: int | None = None):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token, self.tokens_per_image = image_token, tokens_per_image
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False):
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize)

    def __call__(self, text: list[str], images=None, return_tensors: str = "pt"):
        counts = []
        if images:
            px = self.image_processor(images=images, return_tensors="pt")
            if "image_grid_thw" in px:
                merge = getattr(self.image_processor, "merge_size", 1) or 1
                counts = [int(g.prod()) // merge**2 for g in px["image_grid_thw"]]
            else:
                counts = [self.tokens_per_image] * len(images)
        parts = text[0].split(self.image_token)
        if len(parts) - 1 != len(counts):
            raise DataError(f"the prompt has {len(parts) - 1} image placeholders for {len(counts)} images.")
        expanded = parts[0] + "".join(self.image_token * n + rest for n, rest in zip(counts, parts[1:]))
        return self.tokenizer([expanded], add_special_tokens=False, return_tensors=return_tensors)

    def save_pretrained(self, path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


# ---------------------------------------------------------------------------------------- policy


class VLMPolicy:
    """A vision-language model plus processor, with image-aware prompts, sampling and log-probs.

    Prompts are text plus a list of images per row. ``encode_prompt`` returns the token ids with
    each image's placeholder tokens expanded (the ids the learner trains on); ``sample`` and
    ``forward_logprobs`` take the same images per row."""

    def __init__(self, model, processor, use_chat_template: bool = True, freeze_vision: bool = False):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.pad_id, self.eos_id, self.bos_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
        self.image_token_id = int(model.config.image_token_id)
        self.image_token = tok.convert_ids_to_tokens(self.image_token_id)
        self.chat = bool(use_chat_template and getattr(processor, "chat_template", None))
        V = model.get_output_embeddings().weight.shape[0]
        # a large finite bias, not -inf: the learner multiplies log-probs of prompt positions by a zero
        # mask, and -inf * 0 would be NaN; exp(-1e9) is exactly 0, so the token is still never sampled
        self.logit_bias = torch.zeros(V)
        self.logit_bias[self.image_token_id] = -1e9
        self._pixels: dict[str, dict[str, torch.Tensor]] = {}
        self.llava = is_llava_llama(model)
        self._sampler = VLMKVSampler(model, self.logit_bias) if self.llava else None
        self.frozen_vision = False
        self.share_prefix = True  # training forwards a group's prompt (images included) once
        self.passes = DecoderPasses(compile=False)  # the language model's training passes (see LMPolicy)
        if freeze_vision:
            self.freeze_vision()

    # ------------------------------------------------------------------------------------ images
    def vision_module(self) -> torch.nn.Module:
        """The vision encoder (Llava: ``vision_tower``; Qwen2-VL: ``visual``)."""
        inner = self.model.model
        for name in ("vision_tower", "visual", "vision_model"):
            if name in inner._modules:
                return inner._modules[name]
        raise WarmstartError(f"{type(self.model).__name__} has no vision encoder named vision_tower/visual/vision_model; "
                             "cannot freeze it.")

    def freeze_vision(self) -> None:
        """Train only the projector and the language model (SOPHIA freezes the vision encoder)."""
        for p in self.vision_module().parameters():
            p.requires_grad_(False)
        self.frozen_vision = True

    def pixel_inputs(self, image, where: str = "image") -> tuple[str, dict[str, torch.Tensor]]:
        """(content key, processor tensors) of one image, cached by content."""
        img = load_image(image, where)
        key = image_key(img)
        if key not in self._pixels:
            if len(self._pixels) > 8192:  # a long run sees many series; keep memory bounded
                self._pixels.clear()
            out = self.processor.image_processor(images=[img], return_tensors="pt")
            self._pixels[key] = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        return key, self._pixels[key]

    def _distinct(self, images: Sequence[Sequence[Any]]) -> tuple[list[dict[str, torch.Tensor]], list[list[int]]]:
        """Distinct images of a batch (processor tensors) and, per row, the indices of its images."""
        keys: dict[str, int] = {}
        uniq: list[dict[str, torch.Tensor]] = []
        rows = []
        for b, imgs in enumerate(images):
            r = []
            for k, im in enumerate(imgs):
                key, px = self.pixel_inputs(im, f"row {b}, image {k}")
                if key not in keys:
                    keys[key] = len(uniq)
                    uniq.append(px)
                r.append(keys[key])
            rows.append(r)
        return uniq, rows

    def _mm_inputs(self, input_ids: torch.Tensor, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Image tensors of a batch in row order, plus ``mm_token_type_ids`` (1 on image tokens) for
        models whose multimodal RoPE needs it (Qwen2-VL)."""
        extra = self._cat(parts)
        if "image_grid_thw" in extra:
            extra["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        return extra

    @staticmethod
    def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]} if parts else {}

    def image_features(self, uniq: list[dict[str, torch.Tensor]], model=None) -> torch.Tensor:
        """Projected features (U, n_img, H) of distinct images (Llava only), by ``model`` (default:
        the policy's own; a frozen KL reference passes itself)."""
        model = model if model is not None else self.model
        px = self._cat(uniq)["pixel_values"].to(model.dtype)
        feats = model.model.get_image_features(pixel_values=px).pooler_output
        return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats

    # ------------------------------------------------------------------------------ text <-> ids
    def encode_prompt(self, prompt: str, images: Sequence[Any] = ()) -> list[int]:
        """Token ids of a prompt with its images: the chat template (images first) when the processor
        has one, else BOS + one image placeholder per image + the text; the processor expands each
        placeholder into the image's tokens."""
        pil = [load_image(im, f"prompt {prompt[:40]!r}, image {k}") for k, im in enumerate(images)]
        if self.chat:
            content = [{"type": "image"} for _ in pil] + [{"type": "text", "text": prompt}]
            text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                      tokenize=False)
            bos = []
        else:
            text = self.image_token * len(pil) + prompt
            bos = [self.bos_id] if self.bos_id is not None else []
        if self.llava and not self.chat:
            # a Llava image is always image_seq_length tokens: expand the placeholders here and skip
            # the processor's image pass (the pixels are computed, and cached, when sampling/training)
            text = text.replace(self.image_token, self.image_token * self.model.config.image_seq_length)
            return bos + list(self.tokenizer(text)["input_ids"])
        out = self.processor(text=[text], images=pil or None, return_tensors="pt")
        return bos + out["input_ids"][0].tolist()

    # continuations are plain text: the text policy's own encode/decode (they read only the tokenizer)
    encode = LMPolicy.encode
    encode_batch = LMPolicy.encode_batch
    decode = LMPolicy.decode

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """:meth:`encode_prompt` of many text-only prompts, one by one (each goes through the chat template or the processor)."""
        return [self.encode_prompt(p) for p in prompts]

    def encode_message(self, text: str, role: str | None, closed: bool = True, images: Sequence[Any] = ()) -> list[int]:
        """Token ids of an environment message appended mid-episode (a tool's output), as the text
        policy's :meth:`LMPolicy.encode_message` (``role`` None: plain text), plus its ``images``
        (a tool's zoomed crop): each image's placeholder tokens after the text -- inside the role's
        turn, as an image content part, when the chat template renders the role. These ids are
        appended to the sampled ones (token-in, token-out); the images join ``Episode.images``."""
        if not images:
            return LMPolicy.encode_message(self, text, role, closed) if role else self.encode(text)
        pil = [load_image(im, f"{role or 'environment'} message {text.strip()[:40]!r}, image {k}") for k, im in enumerate(images)]
        if not (self.chat and role):
            return self._expand_images(text + self.image_token * len(pil), pil)
        # the template's own markers for the role, found as LMPolicy.encode_message finds them
        probe = [{"role": "user", "content": [{"type": "text", "text": "?"}]},
                 {"role": "assistant", "content": [{"type": "text", "text": PROBE}]}]
        msg = {"role": role, "content": [{"type": "text", "text": text.strip()}, *({"type": "image"} for _ in pil)]}
        return self._expand_images(message_suffix(self.processor.apply_chat_template, probe, msg, self.tokenizer.eos_token, closed), pil)

    def _expand_images(self, text: str, pil: list) -> list[int]:
        """Ids of ``text`` (no special tokens added) with each image placeholder expanded into that
        image's tokens: ``image_seq_length`` of them for a Llava, what the processor computes otherwise."""
        if self.llava:
            n = text.count(self.image_token)
            if n != len(pil):
                raise DataError(f"a message has {n} image placeholders for {len(pil)} images.")
            text = text.replace(self.image_token, self.image_token * self.model.config.image_seq_length)
            return self.encode(text)
        return self.processor(text=[text], images=pil, return_tensors="pt")["input_ids"][0].tolist()

    # ---------------------------------------------------------------------------------- sampling
    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        stop_ids: list[int] | None = None,
        images: Sequence[Sequence[Any]] | None = None,
    ) -> Samples:
        """Continuations of each prompt with its images (``images[b]`` for row b), with behaviour
        log-probs. Llava: features of each distinct image once per chunk, then the KV sampler;
        other VLMs: HF ``generate`` + a scoring pass."""
        images = images if images is not None else [[] for _ in prompt_ids]
        if len(images) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(images)} image lists")

        def chunk(i: int, j: int) -> Samples:
            uniq, rows = self._distinct(images[i:j])
            if self._sampler is None:
                return self._hf_sample(prompt_ids[i:j], uniq, rows, max_new_tokens, temperature, top_p, generator, stop_ids)
            with torch.no_grad():
                feats = self.image_features(uniq) if uniq else None
            return self._sampler.sample_images(
                prompt_ids[i:j], rows, feats, self.image_token_id, max_new_tokens=max_new_tokens, eos_id=self.eos_id,
                pad_id=self.pad_id, temperature=temperature, top_p=top_p, generator=generator, stop_ids=stop_ids)

        return sample_in_chunks(self.model, len(prompt_ids), batch_size, chunk)

    def _hf_sample(self, prompts, uniq, rows, max_new_tokens, temperature, top_p, generator, stop_ids) -> Samples:
        """Fallback: HF ``generate`` on left-padded prompts with the image tensors in row order, then
        one teacher-forced pass for the behaviour log-probs (under the same logit mask)."""
        P = max(len(p) for p in prompts)
        ids, att = left_pad(prompts, self.pad_id)
        parts = [uniq[j] for r in rows for j in r]
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        stops = sorted({*(stop_ids or []), *([self.eos_id] if self.eos_id is not None else [])})
        kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=self.pad_id,
                  eos_token_id=stops or None, suppress_tokens=[self.image_token_id])
        if temperature > 0:
            kw.update(temperature=temperature, top_p=top_p, top_k=0)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=att, **self._mm_inputs(ids, parts), **kw)
            gen = out[:, P:]
            full_att = torch.cat([att, torch.ones_like(gen)], 1)
            logits = self.model(input_ids=out, attention_mask=full_att, **self._mm_inputs(out, parts)).logits[:, P - 1 : -1].float()
        t = temperature if temperature > 0 else 1.0
        lps = torch.log_softmax((logits + self.logit_bias) / t, -1).gather(-1, gen.unsqueeze(-1)).squeeze(-1)
        return cut_at_stops(gen, lps, set(stops))

    # ---------------------------------------------------------------------------------- learning
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: Sequence[Sequence[Any]] | None = None,
               model=None):
        """Logits (B, T, V) of a (right-padded) batch with its images, the image token masked out.
        Llava: each distinct image goes through the vision tower once (with gradients). ``model``
        defaults to the policy's own; a frozen copy of it (GRPO's KL reference) may stand in."""
        model = model if model is not None else self.model
        images = images if images is not None else [[] for _ in range(input_ids.shape[0])]
        if self.llava:
            emb, _ = self._embeds(input_ids, images, model)
            logits = model(inputs_embeds=emb, attention_mask=attention_mask).logits
        else:
            uniq, rows = self._distinct(images)
            extra = self._mm_inputs(input_ids, [uniq[j] for r in rows for j in r])
            logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits + self.logit_bias.to(logits.dtype)

    def _embeds(self, input_ids: torch.Tensor, images: Sequence[Sequence[Any]], model=None):
        """Llava: input embeddings (B, T, H) with each image's projected features in its slots (each
        distinct image through the vision tower once, with gradients), and prefix keys (B, T): the
        ids with image slots numbered ``-(j + 1)`` by distinct image ``j``, so rows share a prompt
        prefix only when text and images are both equal (as the sampler's prefill does)."""
        model = model if model is not None else self.model
        uniq, rows = self._distinct(images)
        emb = model.get_input_embeddings()(input_ids)  # (B, T, H)
        key = input_ids.clone()
        if uniq:
            feats = self.image_features(uniq, model)  # (U, n_img, H)
            slots = input_ids == self.image_token_id
            order = [j for r in rows for j in r]
            if int(slots.sum()) != len(order) * feats.shape[1]:
                raise DataError(f"the batch has {int(slots.sum())} image tokens for {len(order)} images "
                                f"({feats.shape[1]} tokens each)")
            emb = emb.masked_scatter(slots.unsqueeze(-1), feats[order].reshape(-1, emb.shape[-1]).to(emb.dtype))
            img = torch.tensor(order, dtype=input_ids.dtype, device=input_ids.device).repeat_interleave(feats.shape[1])
            key = key.masked_scatter(slots, -(img + 1))  # row-major, as the features above
        return emb, key

    def forward_logprobs(self, input_ids, attention_mask, temperature: float = 1.0, with_entropy: bool = False,
                         images: Sequence[Sequence[Any]] | None = None, action_mask=None):
        """Log-probs (B, T-1) of ``input_ids[:, 1:]`` given the images (and the entropy per position
        when asked), as the text policy's. With ``action_mask`` (B, T-1) on a Llava, as the text
        policy's: only those positions are scored (0 elsewhere), the head runs there only and the rows
        of a group forward their shared prompt -- image tokens included -- once
        (:func:`~warmstart.policies.action_logprobs.action_logprobs`); other VLMs score every position."""
        if action_mask is not None and self.llava and supports_action_logprobs(self.model):
            images = images if images is not None else [[] for _ in range(input_ids.shape[0])]
            emb, key = self._embeds(input_ids, images)
            return action_logprobs(self.model, input_ids, attention_mask, action_mask, temperature, with_entropy,
                                   share_prefix=self.share_prefix, passes=self.passes, inputs_embeds=emb,
                                   prefix_key=key, logit_bias=self.logit_bias)
        return logprobs_from_logits(self.logits(input_ids, attention_mask, images), input_ids, temperature, with_entropy)

    # --------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> None:
        """Plain HF files: ``AutoModelForImageTextToText`` and ``AutoProcessor`` load the directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.processor.save_pretrained(path)
        # what this directory is, for warmstart.policies.load_policy (HF's Auto* classes ignore it)
        (path / POLICY_FILE).write_text(json.dumps({"kind": "vlm", "format": "warmstart-vlm-policy", "chat_template": self.chat,
                                                    "freeze_vision": self.frozen_vision}, indent=2))

    def load_weights(self, path: str | Path) -> None:
        """Load the weights of a checkpoint saved by :meth:`save` into this policy (resume)."""
        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise WarmstartError(f"no model weights (*.safetensors) in {path}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        ref = self.model.state_dict()
        # checkpoints store HF's serialised names; map them back through the model's own loader
        if set(state) - set(ref):
            fresh = type(self.model).from_pretrained(str(path), local_files_only=True, dtype=self.model.dtype)
            state = fresh.state_dict()
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith("lm_head.weight")]
        if missing or unexpected:
            raise WarmstartError(f"checkpoint {path} does not match the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @classmethod
    def from_pretrained(cls, path: str | Path, use_chat_template: bool = True, dtype: str = "float32",
                        freeze_vision: bool = False) -> "VLMPolicy":
        """Load a local image-text-to-text model and its processor (nothing is fetched from a hub)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        p = Path(path)
        if not p.is_dir() or not (p / "config.json").exists():
            raise WarmstartError(f"policy.path {str(path)!r} is not a Hugging Face model directory (config.json, "
                                 "*.safetensors, processor and tokenizer files).")
        try:
            model = AutoModelForImageTextToText.from_pretrained(str(p), local_files_only=True, dtype=getattr(torch, dtype))
        except (OSError, ValueError, KeyError) as e:
            raise WarmstartError(f"could not load the vision-language model in {p}: {e}") from None
        try:
            proc = AutoProcessor.from_pretrained(str(p), local_files_only=True)
        except (ImportError, AttributeError, ValueError, TypeError):
            # the model's own processor needs something absent here (e.g. torchvision for a video
            # processor): assemble the image half from its tokenizer and image processor
            from transformers import AutoImageProcessor, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
                ip = AutoImageProcessor.from_pretrained(str(p), local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise WarmstartError(f"{p}: could not load a processor, tokenizer or image processor: {e}") from None
            proc = SplitProcessor(tok, ip, tok.convert_ids_to_tokens(int(model.config.image_token_id)),
                                  getattr(model.config, "image_seq_length", None))
        if getattr(proc, "tokenizer", None) is None or getattr(proc, "image_processor", None) is None:
            raise WarmstartError(f"{p}: the processor has no tokenizer or image processor; a VLM needs both.")
        proc.tokenizer.padding_side = "left"
        return cls(model, proc, use_chat_template, freeze_vision)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# -------------------------------------------------------------------------------------- registry


class VLMPolicyConfig(PluginConfig):
    kind: str = "vlm"
    path: str | None = Field(None, description="local HF image-text-to-text model directory (e.g. Qwen2-VL); when set, the size fields are ignored")
    hidden_size: int = Field(64, ge=8, description="tiny VLM: language model width")
    num_layers: int = Field(3, ge=1, description="tiny VLM: language model layers")
    num_heads: int = Field(4, ge=1, description="tiny VLM: language model attention heads")
    intermediate_size: int | None = Field(None, description="tiny VLM: language MLP width; default 4 x hidden")
    max_position: int = Field(384, ge=16, description="tiny VLM: longest sequence (image tokens + prompt + answer)")
    image_size: int = Field(32, ge=8, description="tiny VLM: images are resized to image_size x image_size")
    patch_size: int = Field(8, ge=2, description="tiny VLM: ViT patch side; (image_size / patch_size)^2 tokens per image")
    vision_hidden: int = Field(32, ge=8, description="tiny VLM: vision tower width")
    vision_layers: int = Field(2, ge=1, description="tiny VLM: vision tower layers")
    vision_heads: int = Field(2, ge=1, description="tiny VLM: vision tower attention heads")
    chars: str | None = Field(None, description="tiny VLM: character vocabulary; default printable ASCII")
    freeze_vision: bool = Field(False, description="train only the projector and the language model (SOPHIA's choice)")
    dtype: str = Field("float32", description="parameter dtype: float32 or bfloat16")
    use_chat_template: bool = Field(True, description="wrap prompts in the processor's chat template when it has one")


def load_vlm_policy(path: str | Path) -> VLMPolicy:
    """Reopen a saved VLM policy (or any local image-text-to-text HF directory)."""
    meta = Path(path) / POLICY_FILE
    info = json.loads(meta.read_text()) if meta.exists() else {}
    return VLMPolicy.from_pretrained(path, use_chat_template=info.get("chat_template", True),
                                     freeze_vision=info.get("freeze_vision", False))


@POLICIES.register("vlm", VLMPolicyConfig, load=load_vlm_policy)
def make_vlm_policy(cfg: VLMPolicyConfig, task=None, seed: int = 0) -> VLMPolicy:
    """A vision-language model: a local HF VLM (`path`, e.g. Qwen2-VL) or a tiny Llava built from this config."""
    if cfg.path:
        return VLMPolicy.from_pretrained(cfg.path, cfg.use_chat_template, cfg.dtype, cfg.freeze_vision)
    torch.manual_seed(seed)
    fields = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position", "image_size", "patch_size",
              "vision_hidden", "vision_layers", "vision_heads", "chars")
    model, proc = build_tiny_vlm(**{k: getattr(cfg, k) for k in fields})
    if cfg.dtype != "float32":
        model = model.to(getattr(torch, cfg.dtype))
    return VLMPolicy(model, proc, cfg.use_chat_template, cfg.freeze_vision)
