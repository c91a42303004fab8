"""Training reward models (a learner): an ORM on the policy's own verified samples, a PRM on
Monte-Carlo step labels. The model itself (:class:`~warmstart.rewards.models.RewardModel`) is a
judge, in :mod:`warmstart.rewards.models`; these phases make one and put it in the run's artifacts.

* ORM data: the policy's own samples on training problems, labelled 1/0 by the task's verifier.
* PRM data (Math-Shepherd-style Monte-Carlo labels): for each step prefix of a sampled solution,
  ``completions`` continuations are sampled from the policy; the prefix's label is the share of
  them that reach the right answer (``step_label: soft``) or 1 if any does (``hard``). The complete
  solution is labelled by the verifier.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import PhaseBase, SingleTurnTask, TokenPolicy
from warmstart.learn.optim import guarded_step, make_adamw
from warmstart.registry import PHASES
from warmstart.rewards.models import RewardModel
from warmstart.search.base import Expander, Partial


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
    artifact: str = Field("", description="name of the model in the run's artifacts store (default: orm or prm)")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of examples held out to report accuracy")
    holdout_by: Literal["example", "problem"] = Field(
        "example", description="hold out a share of the examples, or of the problems (no prompt seen in training: "
                               "the honest test when several samples of a problem repeat)")


class PRMConfig(RewardModelConfig):
    kind: str = "train_prm"
    samples_per_problem: int = Field(2, ge=1, description="policy solutions per problem, split into steps")
    completions: int = Field(4, ge=1, description="Monte-Carlo completions per step prefix")
    step_label: Literal["soft", "hard"] = Field("soft", description="soft: share of completions that are right; hard: 1 if any is")


class RewardModelPhase(PhaseBase):
    """Collect labelled samples once (first step), then ``steps`` BCE updates; at the end the model is
    put in the run's artifacts store (``artifacts/<orm|prm>``) for later phases and ``warmstart search``."""

    def __init__(self, cfg: RewardModelConfig, ctx, which: str):
        self.cfg, self.ctx, self.which = cfg, ctx, which
        self.rm = RewardModel.from_policy(ctx.policy, which)
        if cfg.init == "scratch":
            for m in self.rm.backbone.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.opt = make_adamw(self.rm.parameters(), cfg.lr, cfg.weight_decay)
        self.data: list | None = None
        self.n_hold = 0
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
        if cfg.holdout_by == "problem":  # held-out problems first, so data[:n_hold] is still the held-out part
            prompts = list(dict.fromkeys(d[0] for d in self.data))
            held = set(prompts[: int(len(prompts) * cfg.holdout)])
            self.data = [d for d in self.data if d[0] in held] + [d for d in self.data if d[0] not in held]
            self.n_hold = sum(d[0] in held for d in self.data)
        else:
            self.n_hold = int(len(self.data) * cfg.holdout)
        self.data_tokens = ntok

    key_metrics = ("loss", "train_acc")

    def step(self, step: int, global_step: int) -> dict:
        cfg = self.cfg
        out = {}
        if self.data is None:
            t = time.time()
            self._collect(global_step)
            out.update({"data_examples": len(self.data), "data_positive": sum(d[2] for d in self.data) / len(self.data),
                        "data_tokens": self.data_tokens, "data_time_s": time.time() - t})
        n_hold = self.n_hold
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
        gnorm, skipped = guarded_step(self.opt, self.rm.parameters(), cfg.max_grad_norm, loss.item())
        ntok = int(att.sum())
        out.update({"loss": loss.item(), "grad_norm": gnorm, "skipped_updates": int(skipped),
                    "train_acc": float(((logits.detach() > 0).float() == (y > 0.5).float()).float().mean()),
                    "tokens_per_s": ntok / max(time.time() - t0, 1e-9)})
        if step + 1 == cfg.steps and n_hold:
            out.update(self.holdout_metrics())
        return out

    def holdout_metrics(self) -> dict:
        hold = self.data[: self.n_hold]
        p = self.rm.score([h[0] for h in hold], [h[1] for h in hold])
        y = [h[2] for h in hold]
        acc = sum((pi > 0.5) == (yi > 0.5) for pi, yi in zip(p, y)) / len(hold)
        bce = float(F.binary_cross_entropy(torch.tensor(p).clamp(1e-6, 1 - 1e-6), torch.tensor(y)))
        return {"holdout_acc": acc, "holdout_bce": bce, "holdout_n": len(hold)}

    def on_end(self) -> None:
        self.ctx.artifacts.put(self.cfg.artifact or self.which, self.rm)

    def state_dict(self) -> dict:
        return {"rm": self.rm.state_dict(), "opt": self.opt.state_dict(), "data": self.data, "data_tokens": self.data_tokens,
                "n_hold": self.n_hold}

    def load_state_dict(self, state: dict) -> None:
        self.rm.load_state_dict(state["rm"])
        self.opt.load_state_dict(state["opt"])
        self.data, self.data_tokens = state["data"], state["data_tokens"]
        self.n_hold = state.get("n_hold", int(len(self.data or []) * self.cfg.holdout))


@PHASES.register("train_orm", RewardModelConfig, requires={"task": SingleTurnTask, "policy": TokenPolicy})
def make_train_orm(cfg: RewardModelConfig, ctx) -> RewardModelPhase:
    """Outcome reward model on the policy's own samples, labelled by the verifier."""
    return RewardModelPhase(cfg, ctx, "orm")


@PHASES.register("train_prm", PRMConfig, requires={"task": SingleTurnTask, "policy": TokenPolicy})
def make_train_prm(cfg: PRMConfig, ctx) -> RewardModelPhase:
    """Process reward model on Monte-Carlo step labels (completions from each step prefix)."""
    return RewardModelPhase(cfg, ctx, "prm")
