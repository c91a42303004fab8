"""ProMed's learners: SFT on dialogues found by MCTS (or scripted), then GRPO with rewards per turn.

**Initialisation** (``promed_sft``): dialogues for ``n_demos`` training cases, as SFT data.
``source: mcts`` searches each case's dialogue tree with the project's generic MCTS
(:class:`~warmstart.tasks.promed.DialogueTreeEnv`: c = 2.2, at most 8 children, values discounted
0.9 per level, +2 for a right answer) and keeps the most-visited path; ``random`` asks 0-4 random
unseen facts; ``greedy`` is the Bayes greedy information-gain questioner; ``at_once`` asks
nothing. Every scripted dialogue ends with the answer the Bayes posterior favours given what it
learned (the search's answer child is that one too), so answers are consistent with the evidence.

**RL** (``promed_grpo``), reward distributed to turns, per episode with task terms ``sig``,
``sig_right`` (SIG when the final answer is right), ``correct`` and ``format``::

    question turn:  r = alpha * sig + beta * sig * 1[right] + format_weight * format
    answer turn:    r = gamma * 1[right] + format_weight * format
    token t of turn k: r_t = r_k;  A_t = r_t - mean of r over the group's action tokens  (no std)

With ``baseline: per_kind`` (our variant, not the paper's) question tokens are compared with the
group's question tokens and answer tokens with its answer tokens: pooled, a question's reward
(~1.2: format + 2 * SIG of ~0.1) sits below the mean that right answers (3 + 1) pull up, so every
question is pushed down whenever the group answers well -- measured, RL then stops asking.

``credit: episode`` is the outcome-only baseline's standard GRPO instead: every token of an episode
gets the episode's summed reward minus the group's mean episode reward (no std). The update is
GRPO's (clipped ratio, KL to the phase's starting policy).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from warmstart.config import PhaseConfig
from warmstart.contracts import MultiTurnTask, TokenPolicy
from warmstart.episode import Episode, collate
from warmstart.errors import ConfigError
from warmstart.functional import group_advantages
from warmstart.learn.grpo import GRPOConfig, OptimizerAndReference, grpo_update, throughput
from warmstart.learn.multi_turn import per_turn_to_tokens
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.learn.supervised import sft_update
from warmstart.registry import PHASES
from warmstart.rollout import Sampling, rollout
from warmstart.search.mcts import MCTS, most_visited_path
from warmstart.tasks.promed import (
    DialogueTreeEnv,
    ProMedTask,
    TreeState,
    at_once_answer,
    case_weights,
    greedy_information_gain,
    random_questions,
    render_dialogue,
)

TERMS = ("sig", "sig_right", "correct", "format")


def _require_promed(task, label: str) -> ProMedTask:
    if not isinstance(task, ProMedTask):
        raise ConfigError(f"phase '{label}' needs the ProMed task (task: {{kind: promed}}); "
                          f"got {type(task).__name__}.")
    return task


# ----------------------------------------------------------------------------------- dialogues


def mcts_dialogues(task: ProMedTask, cases, simulations: int = 32, c_puct: float = 2.2, max_children: int = 8,
                   discount: float = 0.9, answer_bonus: float = 2.0) -> tuple[list[tuple[list[int], int]], dict]:
    """(questions, answer) per case: the most-visited path of an MCTS over its dialogue tree (all
    trees searched together); a path that stops before answering gets the posterior's answer."""
    world = task.world
    weights = [case_weights(world, c, task.cfg.temperature, task.cfg.shapley) for c in cases]
    env = DialogueTreeEnv(world, list(cases), weights, task.max_questions, max_children, discount, answer_bonus)
    search = MCTS(env, simulations=simulations, c_puct=c_puct, leaves_per_tree=1, max_depth=task.max_questions + 1)
    roots = search.search([TreeState(i) for i in range(len(cases))])
    out = [env.finish(most_visited_path(r)[-1].state) for r in roots]
    return out, {"mcts_expansions": search.expansions, "mcts_time_s": search.time_s}


def scripted_dialogues(task: ProMedTask, cases, source: str, rng: np.random.Generator) -> list[tuple[list[int], int]]:
    """(questions, answer) per case for the scripted sources ``random``, ``greedy`` and ``at_once``."""
    world, out = task.world, []
    for c in cases:
        if source == "at_once":
            out.append(([], at_once_answer(world, c)))
        elif source == "greedy":
            g = greedy_information_gain(world, c, task.max_questions)
            out.append((g.questions, g.answer))
        elif source == "random":
            qs = random_questions(world, c, rng, min(4, task.max_questions))
            facts = world.known_facts(c, c.visible)
            facts.update({j: v for j, v in c.facts if j in qs})  # the asked facts the record holds
            out.append((qs, world.map_answer(facts, c.options)))
        else:
            raise ValueError(f"unknown dialogue source {source!r}")
    return out


def dialogue_episode(policy, task: ProMedTask, case, questions: list[int], answer: int) -> Episode:
    """A demo episode: the doctor's turns (loss, each ending with EOS) and the patient's replies
    (environment tokens)."""
    world = task.world
    e = Episode(prompt=world.prompt(case), prompt_ids=policy.encode_prompt(world.prompt(case)))
    eos = [policy.eos_id] if policy.eos_id is not None else []
    for text, reply in render_dialogue(world, case, questions, answer):
        ids = policy.encode(text) + eos
        e.add_turn(ids, [0.0] * len(ids), text)
        if reply is not None:
            e.add_env(policy.encode(reply))
    return e


# ----------------------------------------------------------------------------------------- SFT


class ProMedSFTConfig(PhaseConfig):
    kind: str = "promed_sft"
    role: Literal["init", "learn"] = "init"
    source: Literal["mcts", "random", "greedy", "at_once"] = Field(
        "mcts", description="where the demo dialogues come from: MCTS over the dialogue tree, random questions, "
                            "the Bayes greedy questioner, or no questions")
    n_demos: int = Field(2000, ge=1, description="training cases to build dialogues for")
    simulations: int = Field(32, ge=1, description="MCTS simulations per case (the paper: 5-10 LM-expanded iterations)")
    c_puct: float = Field(2.2, gt=0, description="exploration constant of the tree search (the paper's UCB c)")
    max_children: int = Field(8, ge=2, description="children per node: the posterior's answer + the most informative questions")
    discount: float = Field(0.9, gt=0, le=1, description="value discount per level of the dialogue tree")
    answer_bonus: float = Field(2.0, ge=0, description="value added at a right final answer")
    data_seed: int = Field(1, description="seed of the demo cases (and of the random questions)")
    batch_size: int = Field(64, ge=1, description="dialogues per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    schedule: Schedule = Field("cosine", description="learning-rate schedule after warm-up")
    warmup: int = Field(20, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="global gradient-norm clip")


class ProMedSFTPhase(OptimizerPhase):
    key_metrics = ("loss", "tokens_per_s")

    def __init__(self, cfg: ProMedSFTConfig, ctx):
        task = _require_promed(ctx.task, cfg.label)
        self.cfg, self.ctx = cfg, ctx
        rng = np.random.default_rng(cfg.data_seed)
        cases = task.sample_cases(cfg.n_demos, rng)
        if cfg.source == "mcts":
            dialogues, self.search_stats = mcts_dialogues(task, cases, cfg.simulations, cfg.c_puct, cfg.max_children,
                                                          cfg.discount, cfg.answer_bonus)
        else:
            dialogues, self.search_stats = scripted_dialogues(task, cases, cfg.source, rng), {}
        self.episodes = [dialogue_episode(ctx.policy, task, c, q, a) for c, (q, a) in zip(cases, dialogues)]
        self.demo_stats = {
            "demo_questions": float(np.mean([len(q) for q, _ in dialogues])),
            "demo_accuracy": float(np.mean([a == c.disease for c, (_, a) in zip(cases, dialogues)])),
        }
        self.opt = make_adamw(ctx.policy.model.parameters(), cfg.lr, cfg.weight_decay, betas=(0.9, 0.98))

    def step(self, step: int, global_step: int) -> dict:
        cfg = self.cfg
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        gen = self.ctx.generator(global_step)
        idx = torch.randint(len(self.episodes), (cfg.batch_size,), generator=gen).tolist()
        out = sft_update(self.ctx.policy, self.opt, [self.episodes[i] for i in idx], cfg.max_grad_norm)
        out["lr"] = self.opt.param_groups[0]["lr"]
        out.update(self.demo_stats)
        return out


@PHASES.register("promed_sft", ProMedSFTConfig, requires={"task": MultiTurnTask, "policy": TokenPolicy})
def make_promed_sft(cfg: ProMedSFTConfig, ctx) -> ProMedSFTPhase:
    """ProMed warm start: SFT on dialogues found by MCTS over the dialogue tree (or scripted ones)."""
    return ProMedSFTPhase(cfg, ctx)


# ------------------------------------------------------------------------------------------ GRPO


class ProMedGRPOConfig(GRPOConfig):
    kind: str = "promed_grpo"
    group_size: int = Field(4, ge=1, description="G: dialogues per case")
    temperature: float = Field(0.7, gt=0, description="sampling temperature")
    eps_low: float = Field(0.1, ge=0, description="lower clip")
    eps_high: float = Field(0.1, ge=0, description="upper clip")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the policy at the start of the phase")
    advantage_scale: Literal["none"] = Field("none", description="ProMed centres rewards without std scaling")
    alpha: float = Field(2.0, ge=0, description="weight of SIG on question tokens")
    beta_sig: float = Field(1.0, ge=0, description="weight of SIG * 1[final answer right] on question tokens")
    gamma: float = Field(3.0, ge=0, description="weight of 1[right] on answer tokens")
    format_weight: float = Field(1.0, ge=0, description="weight of the format term (1 for a turn in the grammar)")
    credit: Literal["turn", "episode"] = Field(
        "turn", description="'turn': each turn's tokens get that turn's reward, minus the group's token mean (ProMed); "
                            "'episode': every token gets the episode's total reward minus the group's mean (outcome RL)")
    baseline: Literal["pooled", "per_kind"] = Field(
        "pooled", description="credit 'turn': subtract the mean over all the group's action tokens (the paper), or "
                              "separate means over question tokens and over final-turn tokens (ours: the answer's "
                              "larger reward then no longer makes every question look bad)")


def weighted_turn_rewards(episodes: list[Episode], cfg: ProMedGRPOConfig, num_turns: int) -> torch.Tensor:
    """(B, K) r_k = alpha*sig + beta_sig*sig_right + gamma*correct + format_weight*format per turn."""
    w = {"sig": cfg.alpha, "sig_right": cfg.beta_sig, "correct": cfg.gamma, "format": cfg.format_weight}
    out = torch.zeros(len(episodes), num_turns)
    for b, e in enumerate(episodes):
        for k, terms in enumerate(e.turn_rewards[:num_turns]):
            out[b, k] = sum(w[name] * float(terms.get(name) or 0.0) for name in TERMS)
    return out


def token_mean_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor,
                          kinds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ``r_t - mean of r over the action tokens of the row's group`` (0 off the mask).

    With ``kinds`` ((B, T) integer token classes, e.g. 0 = question, 1 = final turn), the mean is
    taken per (group, class): each token is compared with the group's tokens of its own class."""
    m = mask.float()
    uniq, inv = torch.unique(groups, return_inverse=True)  # inv: (B,)
    if kinds is None:
        kinds = torch.zeros_like(token_rewards, dtype=torch.long)
    n_kinds = int(kinds.max()) + 1 if kinds.numel() else 1
    cell = inv.unsqueeze(1) * n_kinds + kinds  # (B, T) index of the (group, class) cell
    tot = torch.zeros(len(uniq) * n_kinds).index_add_(0, cell.flatten(), (token_rewards * m).flatten())
    cnt = torch.zeros(len(uniq) * n_kinds).index_add_(0, cell.flatten(), m.flatten())
    mean = tot / cnt.clamp(min=1.0)
    return (token_rewards - mean[cell]) * m


def final_turn_tokens(episodes: list[Episode], turn_index: torch.Tensor) -> torch.Tensor:
    """(B, T-1) 1 on the tokens of each episode's last turn (its answer, or the turn that ended it), else 0."""
    last = torch.tensor([len(e.turns) - 1 for e in episodes]).unsqueeze(1)  # (B, 1)
    return ((turn_index == last) & (turn_index >= 0)).long()


class ProMedGRPOPhase(OptimizerAndReference):
    """GRPO over diagnosis dialogues, read in run order: collect (the one rollout; the patient
    answers every question) -> score (the task's per-turn terms, weighted) -> advantages (per token,
    ``credit``) -> update (:func:`~warmstart.learn.grpo.grpo_update`, KL to the phase's start)."""

    key_metrics = ("reward", "accuracy", "questions", "useless_share")

    def __init__(self, cfg: ProMedGRPOConfig, ctx):
        self.task = _require_promed(ctx.task, cfg.label)
        self.cfg, self.ctx, self.policy = cfg, ctx, ctx.policy
        self.opt = make_adamw(self.policy.model.parameters(), cfg.lr, cfg.weight_decay)

    def step(self, step: int, global_step: int) -> dict:
        cfg, ctx, K = self.cfg, self.ctx, self.task.max_turns
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        t0 = time.time()
        # collect: G dialogues per case, the patient answering each question
        gen = ctx.generator(global_step)
        problems = self.task.sample_problems(cfg.prompts_per_step, gen)
        sampling = Sampling(cfg.max_new_tokens or self.task.max_new_tokens, cfg.temperature, cfg.top_p,
                            batch_size=cfg.sample_batch_size)
        episodes, stats = rollout(self.policy, problems, task=self.task, samples=cfg.group_size, sampling=sampling,
                                  generator=gen, workers=ctx.workers)
        # score: the weighted per-turn terms
        R = weighted_turn_rewards(episodes, cfg, K)  # (B, K)
        for b, e in enumerate(episodes):
            e.reward = float(R[b].sum())
        metrics = {"reward": float(R.sum(1).mean())}
        metrics.update(self.task.dialogue_metrics(episodes))
        # advantages per token
        batch = collate(episodes, self.policy.pad_id)
        adv = self.token_advantages(R, batch, episodes)
        kl_coef = torch.full_like(batch.old_logprobs, cfg.beta)
        # update
        upd = grpo_update(self.policy, self.opt, batch, adv, kl_coef, self.reference, cfg, ctx.generator(global_step, salt=1))
        metrics.update(upd)
        metrics["lr"] = self.opt.param_groups[0]["lr"]
        metrics.update(throughput(stats, upd["trained_tokens"], t0))
        return metrics

    def token_advantages(self, R: torch.Tensor, batch, episodes: list[Episode]) -> torch.Tensor:
        """(B, T-1) advantages from the (B, K) weighted turn rewards (see the module docstring)."""
        if self.cfg.credit == "episode":
            total = R.sum(1)  # (B,)
            return group_advantages(total, batch.groups, "none").unsqueeze(1) * batch.action_mask.float()
        r_tok = per_turn_to_tokens(R, batch.turn_index)  # (B, T-1)
        kinds = final_turn_tokens(episodes, batch.turn_index) if self.cfg.baseline == "per_kind" else None
        return token_mean_advantages(r_tok, batch.action_mask, batch.groups, kinds)


@PHASES.register("promed_grpo", ProMedGRPOConfig, requires={"task": MultiTurnTask, "policy": TokenPolicy})
def make_promed_grpo(cfg: ProMedGRPOConfig, ctx) -> ProMedGRPOPhase:
    """ProMed RL: GRPO over diagnosis dialogues with SIG rewards on question turns (or outcome-only)."""
    return ProMedGRPOPhase(cfg, ctx)
