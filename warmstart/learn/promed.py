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

from warmstart.engine.config import PhaseConfig
from warmstart.episode import Episode
from warmstart.errors import ConfigError
from warmstart.init.sft import sft_update
from warmstart.learn.grpo import GRPOConfig, GRPOPhase
from warmstart.learn.multi_turn import per_turn_to_tokens
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.registry import PHASES
from warmstart.rollout.multi_turn import multi_turn_rollout
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

    def step(self, global_step: int) -> dict:
        cfg = self.cfg
        set_lr(self.opt, lr_at(self._phase_step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        gen = self.ctx.generator(global_step)
        idx = torch.randint(len(self.episodes), (cfg.batch_size,), generator=gen).tolist()
        out = sft_update(self.ctx.policy, self.opt, [self.episodes[i] for i in idx], cfg.max_grad_norm)
        self._phase_step += 1
        out["lr"] = self.opt.param_groups[0]["lr"]
        out.update(self.demo_stats)
        return out


@PHASES.register("promed_sft", ProMedSFTConfig)
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


def weighted_turn_rewards(episodes: list[Episode], cfg: ProMedGRPOConfig, num_turns: int) -> torch.Tensor:
    """(B, K) r_k = alpha*sig + beta_sig*sig_right + gamma*correct + format_weight*format per turn."""
    w = {"sig": cfg.alpha, "sig_right": cfg.beta_sig, "correct": cfg.gamma, "format": cfg.format_weight}
    out = torch.zeros(len(episodes), num_turns)
    for b, e in enumerate(episodes):
        for k, terms in enumerate(e.turn_rewards[:num_turns]):
            out[b, k] = sum(w[name] * float(terms.get(name) or 0.0) for name in TERMS)
    return out


def token_mean_advantages(token_rewards: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B, T) ``r_t - mean of r over the action tokens of the row's group`` (0 off the mask)."""
    m = mask.float()
    uniq, inv = torch.unique(groups, return_inverse=True)
    tot = torch.zeros(len(uniq)).index_add_(0, inv, (token_rewards * m).sum(1))
    cnt = torch.zeros(len(uniq)).index_add_(0, inv, m.sum(1))
    mean = tot / cnt.clamp(min=1.0)
    return (token_rewards - mean[inv].unsqueeze(1)) * m


class ProMedGRPOPhase(GRPOPhase):
    needs_recipe_rewards = False  # the task's per-turn terms are the reward

    def __init__(self, cfg: ProMedGRPOConfig, ctx):
        self.task = _require_promed(ctx.task, cfg.label)
        super().__init__(cfg, ctx)
        self._dialogue_stats: dict[str, float] = {}

    def collect(self, global_step: int) -> tuple[list[Episode], dict]:
        cfg, ctx = self.cfg, self.ctx
        gen = ctx.generator(global_step)
        problems = self.task.sample_problems(cfg.prompts_per_step, gen)
        eps, stats = multi_turn_rollout(self.policy, self.task, problems, cfg.group_size, cfg.temperature, cfg.top_p,
                                        gen, None, cfg.max_new_tokens, None, cfg.sample_batch_size)
        r = weighted_turn_rewards(eps, cfg, self.task.max_turns).sum(1)
        for b, e in enumerate(eps):
            e.reward = float(r[b])  # the episode's total, for logging and drop_uniform_groups
        self._dialogue_stats = self.task.dialogue_metrics(eps)
        return eps, stats

    def token_advantages(self, episodes: list[Episode], batch) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        R = weighted_turn_rewards(episodes, cfg, self.task.max_turns)  # (B, K)
        if cfg.credit == "episode":
            total = R.sum(1)  # (B,)
            uniq, inv = torch.unique(batch.groups, return_inverse=True)
            mean = torch.zeros(len(uniq)).index_add_(0, inv, total) / torch.zeros(len(uniq)).index_add_(0, inv, torch.ones_like(total))
            adv = (total - mean[inv]).unsqueeze(1) * batch.action_mask.float()
        else:
            r_tok = per_turn_to_tokens(R, batch.turn_index)  # (B, T-1)
            adv = token_mean_advantages(r_tok, batch.action_mask, batch.groups)
        return adv, torch.full_like(batch.old_logprobs, cfg.beta)

    def step(self, global_step: int) -> dict:
        metrics = super().step(global_step)
        metrics.pop("accuracy", None)  # the generic text check does not apply; the dialogue's is below
        metrics.update(self._dialogue_stats)
        return metrics


@PHASES.register("promed_grpo", ProMedGRPOConfig)
def make_promed_grpo(cfg: ProMedGRPOConfig, ctx) -> ProMedGRPOPhase:
    """ProMed RL: GRPO over diagnosis dialogues with SIG rewards on question turns (or outcome-only)."""
    return ProMedGRPOPhase(cfg, ctx)
