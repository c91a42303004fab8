"""Learned reward models: an outcome RM (ORM) and a process RM (PRM), and the phases that train them.

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
import time
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from warmstart.engine.config import PhaseConfig
from warmstart.errors import WarmstartError
from warmstart.learn.optim import make_adamw
from warmstart.registry import PHASES

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


# ------------------------------------------------------------------------------------------ data


def split_steps(text: str, sep: str = ";") -> list[str]:
    """Step prefixes of a solution, each ending at a separator: ``'a;b;#c'`` -> ``['a;', 'a;b;']``."""
    out, i = [], text.find(sep)
    while i >= 0:
        out.append(text[: i + 1])
        i = text.find(sep, i + 1)
    return out


def mc_step_labels(task, answer: str, completions: list[list[str]], hard: bool = False) -> list[float]:
    """Label each step prefix from the texts of its Monte-Carlo completions (each a *full* solution:
    prefix + continuation): the share that reach ``answer`` (soft), or 1.0 if any does (hard)."""
    labels = []
    for comps in completions:
        hits = [task.is_correct(c, answer) for c in comps]
        frac = sum(hits) / max(len(hits), 1)
        labels.append(float(frac > 0) if hard else frac)
    return labels


def orm_examples(policy, task, problems, samples: int, temperature: float, generator) -> tuple[list, int]:
    """(prompt, solution, label) from the policy's own samples, labelled by the verifier."""
    from warmstart.search.base import Expander, Partial

    x = Expander(policy, task, problems, temperature, 1.0, generator)
    kids = x.expand([Partial(i) for i in range(len(problems))], samples, full=True)
    data = []
    for ks in kids:
        for k in ks:
            prob = problems[k.problem]
            t = x.text(k)
            data.append((prob.prompt, t, float(task.is_correct(t, prob.answer))))
    return data, sum(x.tokens)


def prm_examples(policy, task, problems, samples: int, completions: int, temperature: float, generator,
                 hard: bool = False) -> tuple[list, int]:
    """(prompt, step prefix or full solution, label) with Monte-Carlo step labels. All completions
    of all prefixes are sampled in one batched call."""
    from warmstart.search.base import Expander, Partial

    x = Expander(policy, task, problems, temperature, 1.0, generator)
    sols = [k for ks in x.expand([Partial(i) for i in range(len(problems))], samples, full=True) for k in ks]
    prefixes = []
    for s in sols:
        cut = [j + 1 for j, t in enumerate(s.ids) if t == x.sep]
        prefixes += [Partial(s.problem, s.ids[:c], s.logprobs[:c], 0, False) for c in cut]
    comps = x.expand(prefixes, completions, full=True)
    data = []
    for pre, cs in zip(prefixes, comps):
        prob = problems[pre.problem]
        label = mc_step_labels(task, prob.answer, [[x.text(c) for c in cs]], hard)[0]
        data.append((prob.prompt, x.text(pre), label))
    for s in sols:
        prob = problems[s.problem]
        t = x.text(s)
        data.append((prob.prompt, t, float(task.is_correct(t, prob.answer))))
    return data, sum(x.tokens)


# ------------------------------------------------------------------------------------------ phases


class RewardModelConfig(PhaseConfig):
    kind: str = "train_orm"
    problems: int = Field(256, ge=1, description="training problems the policy is sampled on")
    samples_per_problem: int = Field(4, ge=1, description="policy samples per problem")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the policy's samples")
    batch_size: int = Field(64, ge=1, description="examples per optimizer step")
    lr: float = Field(1e-3, gt=0, description="learning rate (AdamW, constant)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    init: Literal["policy", "scratch"] = Field("policy", description="backbone: a copy of the policy's, or freshly initialised")
    out: str = Field("", description="directory for the model, relative to the run dir (default reward_models/<orm|prm>)")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of examples held out to report accuracy")


class PRMConfig(RewardModelConfig):
    kind: str = "train_prm"
    samples_per_problem: int = Field(2, ge=1, description="policy solutions per problem, split into steps")
    completions: int = Field(4, ge=1, description="Monte-Carlo completions per step prefix")
    step_label: Literal["soft", "hard"] = Field("soft", description="soft: share of completions that are right; hard: 1 if any is")


class RewardModelPhase:
    """Collect labelled samples once (first step), then ``steps`` BCE updates; saves the model into
    the run dir at the end and leaves it in ``ctx.extras['orm'|'prm']`` for later phases."""

    def __init__(self, cfg: RewardModelConfig, ctx, which: str):
        self.cfg, self.ctx, self.which = cfg, ctx, which
        self.rm = RewardModel.from_policy(ctx.policy, which)
        if cfg.init == "scratch":
            for m in self.rm.backbone.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.opt = make_adamw(self.rm.parameters(), cfg.lr, cfg.weight_decay)
        self.data: list | None = None
        self.data_tokens = 0

    def _collect(self, global_step: int) -> None:
        cfg, ctx = self.cfg, self.ctx
        gen = ctx.generator(global_step, salt=41)
        probs = ctx.task.sample_problems(cfg.problems, gen)
        if self.which == "orm":
            data, ntok = orm_examples(ctx.policy, ctx.task, probs, cfg.samples_per_problem, cfg.temperature, gen)
        else:
            data, ntok = prm_examples(ctx.policy, ctx.task, probs, cfg.samples_per_problem, cfg.completions,
                                      cfg.temperature, gen, cfg.step_label == "hard")
        perm = torch.randperm(len(data), generator=gen).tolist()
        self.data = [data[i] for i in perm]
        self.data_tokens = ntok

    def step(self, global_step: int) -> dict:
        cfg = self.cfg
        out = {}
        if self.data is None:
            t = time.time()
            self._collect(global_step)
            out.update({"data_examples": len(self.data), "data_positive": sum(d[2] for d in self.data) / len(self.data),
                        "data_tokens": self.data_tokens, "data_time_s": time.time() - t})
        n_hold = int(len(self.data) * cfg.holdout)
        train = self.data[n_hold:] or self.data
        gen = self.ctx.generator(global_step, salt=42)
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen).tolist()
        batch = [train[i] for i in idx]
        ids, att = self.rm.encode([b[0] for b in batch], [b[1] for b in batch])
        y = torch.tensor([b[2] for b in batch], dtype=torch.float32)
        t0 = time.time()
        self.rm.train()
        logits = self.rm(ids, att)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.rm.parameters(), cfg.max_grad_norm)
        self.opt.step()
        ntok = int(att.sum())
        out.update({"loss": loss.item(), "grad_norm": float(gnorm),
                    "train_acc": float(((logits.detach() > 0).float() == (y > 0.5).float()).float().mean()),
                    "tokens_per_s": ntok / max(time.time() - t0, 1e-9)})
        self._k += 1
        if self._k == cfg.steps and n_hold:
            out.update(self.holdout_metrics())
        return out

    _k = 0

    def holdout_metrics(self) -> dict:
        n_hold = int(len(self.data) * self.cfg.holdout)
        hold = self.data[:n_hold]
        p = self.rm.score([h[0] for h in hold], [h[1] for h in hold])
        y = [h[2] for h in hold]
        acc = sum((pi > 0.5) == (yi > 0.5) for pi, yi in zip(p, y)) / len(hold)
        bce = float(F.binary_cross_entropy(torch.tensor(p).clamp(1e-6, 1 - 1e-6), torch.tensor(y)))
        return {"holdout_acc": acc, "holdout_bce": bce, "holdout_n": len(hold)}

    def on_start(self, first_step: int) -> None:
        self._k = first_step

    def on_end(self) -> None:
        out = self.cfg.out or f"reward_models/{self.which}"
        if self.ctx.run_dir is not None:
            self.rm.save(Path(self.ctx.run_dir) / out, {"examples": len(self.data or [])})
        self.ctx.extras[self.which] = self.rm

    def state_dict(self) -> dict:
        return {"rm": self.rm.state_dict(), "opt": self.opt.state_dict(), "data": self.data, "data_tokens": self.data_tokens}

    def load_state_dict(self, state: dict) -> None:
        self.rm.load_state_dict(state["rm"])
        self.opt.load_state_dict(state["opt"])
        self.data, self.data_tokens = state["data"], state["data_tokens"]


@PHASES.register("train_orm", RewardModelConfig)
def make_train_orm(cfg: RewardModelConfig, ctx) -> RewardModelPhase:
    """Outcome reward model on the policy's own samples, labelled by the verifier."""
    return RewardModelPhase(cfg, ctx, "orm")


@PHASES.register("train_prm", PRMConfig)
def make_train_prm(cfg: PRMConfig, ctx) -> RewardModelPhase:
    """Process reward model on Monte-Carlo step labels (completions from each step prefix)."""
    return RewardModelPhase(cfg, ctx, "prm")


def find_reward_model(checkpoint: str | Path, kind: str) -> Path | None:
    """``reward_models/<kind>`` in the run that holds ``checkpoint`` (``run/final`` or
    ``run/checkpoints/step-N``), or None."""
    c = Path(checkpoint).resolve()
    for base in (c, c.parent, c.parent.parent):
        d = base / "reward_models" / kind
        if (d / META_FILE).exists():
            return d
    return None
