"""Learned reward models: an outcome RM (ORM) and a process RM (PRM), used as scorers by search
(and as reward terms). The phases that train them are learners: :mod:`warmstart.learn.reward_models`.

Model: a causal-LM backbone (by default a copy of the policy's own transformer, the usual warm
start for a reward model) with a linear head on the hidden state of the *last* token, read as the
logit of "this (partial) solution leads to the right answer". Trained with binary cross-entropy
(soft labels allowed); :meth:`RewardModel.score` returns probabilities.

* ORM data: the policy's own samples on training problems, labelled 1/0 by the task's verifier.
* PRM data (Math-Shepherd-style Monte-Carlo labels): for each step prefix of a sampled solution,
  ``completions`` continuations are sampled from the policy; the prefix's label is the share of
  them that reach the right answer (``label: soft``) or 1 if any does (``label: hard``: "a step is
  good if completions from it reach the right answer"). The complete solution is labelled by the
  verifier.

On-disk format (a directory; loads with plain Hugging Face + safetensors, no warmstart needed)::

    config.json, model.safetensors   the backbone: ``AutoModel.from_pretrained(dir)`` (e.g. LlamaModel)
    tokenizer files                  ``AutoTokenizer.from_pretrained(dir)``
    reward_head.safetensors          ``weight`` (1, hidden), ``bias`` (1,): logit = h_last @ weight.T + bias
    reward_model.json                {"kind": "orm"|"prm", "head": "linear_last_token", "output": "sigmoid", ...}

Input text: BOS + prompt + solution (characters, no chat template); right-padded, so the last real
token's position is ``attention_mask.sum(1) - 1``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch

from warmstart.errors import WarmstartError

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


class RewardModel(torch.nn.Module):
    """Backbone + linear head on the last token; ``kind`` is 'orm' or 'prm' (same model, other data)."""

    def __init__(self, backbone, tokenizer, kind: str = "orm"):
        super().__init__()
        self.backbone, self.tokenizer, self.kind = backbone, tokenizer, kind
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.bos_id = tokenizer.bos_token_id

    @classmethod
    def from_policy(cls, policy, kind: str = "orm") -> "RewardModel":
        """Warm-start from the policy's transformer (a copy; the policy is not touched)."""
        base = getattr(policy.model, "model", None) or getattr(policy.model, "base_model", None)
        if base is None:
            raise WarmstartError("cannot find the policy's transformer backbone (model.model) to start a reward model from")
        return cls(copy.deepcopy(base), policy.tokenizer, kind)

    # ------------------------------------------------------------------------------------- inputs
    def encode(self, prompts: list[str], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = []
        for p, t in zip(prompts, texts):
            ids = self.tokenizer(p + t, add_special_tokens=False)["input_ids"]
            seqs.append(([self.bos_id] if self.bos_id is not None else []) + list(ids))
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), T), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            att[b, : len(s)] = 1
        return ids, att

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        last = attention_mask.sum(1) - 1  # (B,) right padding: last real token
        h_last = h[torch.arange(h.shape[0]), last]  # (B, H)
        return self.head(h_last).squeeze(-1)  # (B,) logits

    @torch.no_grad()
    def score(self, prompts: list[str], texts: list[str], batch_size: int = 512) -> list[float]:
        """P(right answer) for each (prompt, solution-so-far)."""
        if not texts:
            return []
        was = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(prompts[i]) + len(texts[i]))  # less padding
        res = [0.0] * len(texts)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, att = self.encode([prompts[i] for i in idx], [texts[i] for i in idx])
            for i, v in zip(idx, torch.sigmoid(self(ids, att)).tolist()):
                res[i] = v
        self.train(was)
        return res

    # ------------------------------------------------------------------------------------- save/load
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the directory atomically (temp dir, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        self.backbone.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        save_file({"weight": self.head.weight.detach().contiguous(), "bias": self.head.bias.detach().contiguous()},
                  str(tmp / HEAD_FILE))
        meta = {"kind": self.kind, "head": "linear_last_token", "output": "sigmoid",
                "input": "bos + prompt + solution, right-padded", **(extra or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "RewardModel":
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        p = Path(path)
        if not (p / META_FILE).exists() or not (p / HEAD_FILE).exists():
            raise WarmstartError(f"{p} is not a reward model directory (needs {META_FILE} and {HEAD_FILE}); "
                                 "train one with a `kind: train_orm` / `train_prm` phase.")
        meta = json.loads((p / META_FILE).read_text())
        backbone = AutoModel.from_pretrained(str(p), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        rm = cls(backbone, tok, meta.get("kind", "orm"))
        head = load_file(str(p / HEAD_FILE))
        rm.head.weight.data.copy_(head["weight"])
        rm.head.bias.data.copy_(head["bias"])
        return rm.eval()


def find_reward_model(checkpoint: str | Path, kind: str) -> Path | None:
    """The reward model ``kind`` ('orm' or 'prm') of the run that holds ``checkpoint`` (``run/final``
    or ``run/checkpoints/step-N``): its artifact ``artifacts/<kind>``, or ``reward_models/<kind>``
    in runs written before the artifacts store; None when there is none."""
    c = Path(checkpoint).resolve()
    for base in (c, c.parent, c.parent.parent):
        for d in (base / "artifacts" / kind, base / "reward_models" / kind):
            if (d / META_FILE).exists():
                return d
    return None
