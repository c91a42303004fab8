"""Token policies: any Hugging Face causal LM, or a tiny Llama built from a config.

:class:`LMPolicy` wraps a model and its tokenizer with what the rest of warmstart needs:
``encode_prompt``, ``sample`` (fast KV-cache sampler for Llama models, HF ``generate`` otherwise),
``logprobs`` for learners, and ``save``/``load_weights`` in plain HF format so that
``AutoModelForCausalLM.from_pretrained(dir)`` loads any checkpoint.
"""

from __future__ import annotations

import json

from pathlib import Path

import torch
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import WarmstartError
from warmstart.functional import logprobs_from_logits
from warmstart.policies import POLICY_FILE
from warmstart.policies.action_logprobs import action_logprobs, supports_action_logprobs
from warmstart.policies.sampler import LlamaKVSampler, Samples, hf_sample, supports_kv_sampler
from warmstart.registry import POLICIES


class LMPolicyConfig(PluginConfig):
    kind: str = "lm"
    path: str | None = Field(None, description="local HF model directory; when set, the size fields below are ignored")
    hidden_size: int = Field(128, ge=8, description="tiny Llama: model width")
    num_layers: int = Field(4, ge=1, description="tiny Llama: decoder layers")
    num_heads: int = Field(4, ge=1, description="tiny Llama: attention heads")
    num_kv_heads: int | None = Field(None, description="tiny Llama: key/value heads (GQA); default = num_heads")
    intermediate_size: int | None = Field(None, description="tiny Llama: MLP width; default 4 x hidden")
    max_position: int = Field(256, ge=16, description="tiny Llama: longest sequence (prompt + all turns)")
    tie_embeddings: bool = Field(True, description="tiny Llama: share input and output embeddings")
    chars: str | None = Field(None, description="character-level vocabulary; default printable ASCII")
    dtype: str = Field("float32", description="parameter dtype: float32 or bfloat16")
    use_chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template when it has one")
    threads: int | None = Field(None, description="torch CPU threads (default: torch's choice)")
    share_prompt: bool = Field(True, description="training: forward a prompt shared by several rows (a GRPO group) once, "
                               "its keys/values reused by all (same loss and gradients, fewer FLOPs)")


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

    def __init__(self, model, tokenizer, use_chat_template: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self._sampler = LlamaKVSampler(model) if supports_kv_sampler(model) else None
        self.share_prefix = True  # training forwards each shared prompt once (see forward_logprobs)

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
        probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "\x00probe\x00"}]
        tpl = self.tokenizer.apply_chat_template
        before = tpl(probe, tokenize=False)
        after = tpl(probe + [{"role": role, "content": text.strip()}], tokenize=False, add_generation_prompt=True)
        cut = before.index("\x00probe\x00") + len("\x00probe\x00")
        eos = self.tokenizer.eos_token or ""
        if closed and eos and before[cut:].startswith(eos):
            cut += len(eos)  # the sampled turn already ends with EOS
        if after[:cut] != before[:cut]:
            raise WarmstartError(f"the chat template renders earlier turns differently once a {role!r} message follows; "
                                 "a tool message cannot be appended token-in, token-out with it.")
        return self.encode(after[cut:])

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
        was_training = self.model.training
        self.model.eval()
        try:
            bs = batch_size or len(prompt_ids) or 1
            parts = []
            for i in range(0, len(prompt_ids), bs):
                chunk = prompt_ids[i : i + bs]
                if self._sampler is not None:
                    parts.append(self._sampler.sample(chunk, max_new_tokens, self.eos_id, self.pad_id, temperature, top_p, generator, stop_ids))
                else:
                    parts.append(hf_sample(self.model, chunk, max_new_tokens, self.eos_id, self.pad_id, temperature, top_p, generator, stop_ids))
        finally:
            self.model.train(was_training)
        return Samples([x for p in parts for x in p.ids], [x for p in parts for x in p.logprobs], [x for p in parts for x in p.finished])

    # -------------------------------------------------------------------------------------- learning
    def forward_logprobs(self, input_ids, attention_mask, temperature: float = 1.0, with_entropy: bool = False,
                         action_mask=None):
        """Log-probs (B, T-1) of ``input_ids[:, 1:]`` (and the entropy per position when asked).

        With ``action_mask`` (B, T-1) only those positions are scored (0 elsewhere), faster and equal:
        the LM head runs there only and rows sharing a prompt forward it once
        (:mod:`warmstart.policies.action_logprobs`; ``share_prefix`` switches that part off)."""
        if action_mask is not None and supports_action_logprobs(self.model):
            return action_logprobs(self.model, input_ids, attention_mask, action_mask, temperature, with_entropy,
                                   share_prefix=self.share_prefix)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        return logprobs_from_logits(logits, input_ids, temperature, with_entropy)

    # ------------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        # what this directory is, for warmstart.policies.load_policy (HF's Auto* classes ignore it)
        (path / POLICY_FILE).write_text(json.dumps({"kind": "lm", "format": "warmstart-lm-policy",
                                                    "chat_template": self.chat}, indent=2))

    def load_weights(self, path: str | Path) -> None:
        from safetensors.torch import load_file

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
    def from_pretrained(cls, path: str | Path, use_chat_template: bool = True, dtype: str = "float32") -> "LMPolicy":
        """Load a local HF causal LM and its tokenizer (nothing is fetched from a hub)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = Path(path)
        if not p.is_dir():
            raise WarmstartError(f"policy.path {str(path)!r} is not a directory. Give a local Hugging Face model "
                                 "directory (config.json, *.safetensors, tokenizer files).")
        if not (p / "config.json").exists():
            raise WarmstartError(f"policy.path {str(path)!r} has no config.json: not a Hugging Face model directory.")
        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as e:
            raise WarmstartError(f"could not load the model in {p}: {e}") from None
        tok.padding_side = "left"
        return cls(model, tok, use_chat_template)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_lm_policy(path: str | Path) -> LMPolicy:
    """Reopen a saved LM policy (or any local HF causal-LM directory)."""
    meta = Path(path) / POLICY_FILE
    chat = json.loads(meta.read_text()).get("chat_template", True) if meta.exists() else True
    return LMPolicy.from_pretrained(path, use_chat_template=chat)


@POLICIES.register("lm", LMPolicyConfig, load=load_lm_policy)
def make_lm_policy(cfg: LMPolicyConfig, task=None, seed: int = 0) -> LMPolicy:
    """A causal LM: a local HF model (`path`) or a tiny Llama with a character tokenizer."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.path:
        policy = LMPolicy.from_pretrained(cfg.path, cfg.use_chat_template, cfg.dtype)
        policy.share_prefix = cfg.share_prompt
        return policy
    from warmstart.policies.tokenizer import build_char_tokenizer

    torch.manual_seed(seed)
    tok = build_char_tokenizer(cfg.chars)
    model = build_tiny_llama(cfg, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    if cfg.dtype != "float32":
        model = model.to(getattr(torch, cfg.dtype))
    policy = LMPolicy(model, tok, cfg.use_chat_template)
    policy.share_prefix = cfg.share_prompt
    return policy
