"""Learning from search: expert iteration, and GRPO whose groups come from a search strategy.

* ``kind: expert_iteration`` -- one step is one iteration: search on fresh training problems
  (MCTS by default, guided by the run's PRM), keep the solutions the verifier accepts, then
  ``sft_steps`` supervised updates on the pool of kept solutions (it grows across iterations).
* ``kind: grpo_search`` -- GRPO (the same :func:`~warmstart.learn.grpo.grpo_update`) whose episodes come from a search: each problem's group is the
  set of complete solutions the search produced (best-of-N reproduces plain GRPO; beam/MCTS give
  groups of searched solutions). Behaviour log-probs are those the sampler recorded step by step
  (same policy, same temperature), so the clipped ratio is exact.
"""

from __future__ import annotations

import time

import torch
from pydantic import Field, SerializeAsAny, field_validator

from warmstart.config import PhaseConfig
from warmstart.contracts import HasDemos, SingleTurnTask, TokenPolicy
from warmstart.episode import Episode
from warmstart.learn.grpo import GRPOConfig, OptimizerAndReference, batch_metrics, frozen_copy, group_update, throughput
from warmstart.learn.optim import OptimizerPhase, Schedule, lr_at, make_adamw, set_lr
from warmstart.learn.supervised import demo_episodes, sft_update
from warmstart.registry import PHASES, SCORERS
from warmstart.search.strategies import SearchConfig, run_search, search_config


def search_scorer(cfg: SearchConfig, ctx):
    """The scorer a search config names, with its reward model (if it reads one) from
    ``reward_model:`` or from the run's artifacts store (put there by a ``train_orm``/``train_prm``
    phase earlier in the run)."""
    kind = cfg.scorer_kind
    rm = cfg.reward_model
    if rm is None and SCORERS.get(kind).config.needs_reward_model:
        rm = ctx.artifacts.get(kind)
    return SCORERS.get(kind).factory(ctx.task, rm)


class ExpertIterationConfig(PhaseConfig):
    kind: str = "expert_iteration"
    steps: int = Field(4, ge=0, description="iterations (search -> filter -> SFT)")
    problems_per_iter: int = Field(128, ge=1, description="fresh training problems searched per iteration")
    search: SerializeAsAny[SearchConfig] = Field(default_factory=lambda: search_config({}, "mcts"),
                                                 description="strategy and knobs of the search: {strategy: mcts, ...}")
    keep_per_problem: int = Field(2, ge=1, description="distinct verified solutions kept per problem (the chosen one first)")
    accumulate: bool = Field(True, description="train on all solutions kept so far (False: this iteration's only)")
    include_demos: bool = Field(True, description="keep the task's demonstrations in the pool (no forgetting, no overfitting a small pool)")
    sft_steps: int = Field(40, ge=1, description="supervised updates per iteration")
    batch_size: int = Field(64, ge=1, description="solutions per update")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    schedule: Schedule = Field("constant", description="learning-rate schedule over all updates of the phase")
    warmup: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)


    @field_validator("search", mode="before")
    @classmethod
    def _strategy_config(cls, v):
        return search_config(v, "mcts")


class ExpertIterationPhase(OptimizerPhase):
    """Expert iteration: search -> keep verified solutions -> SFT on the pool, once per step."""

    key_metrics = ("search_accuracy", "kept", "loss")

    def __init__(self, cfg: ExpertIterationConfig, ctx):
        self.cfg, self.ctx = cfg, ctx
        self.policy = ctx.policy
        self.opt = make_adamw(self.policy.model.parameters(), cfg.lr, cfg.weight_decay, betas=(0.9, 0.98))
        self.pool: list[Episode] = []
        self.demos: list[Episode] = []
        if cfg.include_demos and isinstance(ctx.task, HasDemos):
            self.demos = demo_episodes(ctx.policy, ctx.task.demos())
        self.scorer = None

    def step(self, step: int, global_step: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if self.scorer is None:
            self.scorer = search_scorer(cfg.search, ctx)
        gen = ctx.generator(global_step)
        problems = ctx.task.sample_problems(cfg.problems_per_iter, gen)
        t0 = time.time()
        res = run_search(self.policy, ctx.task, problems, self.scorer, cfg.search, gen, workers=ctx.workers)
        t_search = time.time() - t0
        kept: list[Episode] = []
        for chosen, cands in zip(res.episodes, res.candidates):
            seen: set[str] = set()
            for e in [chosen, *cands]:
                if len(seen) >= cfg.keep_per_problem:
                    break
                if e.text not in seen and ctx.task.is_correct(e.text, e.info["answer"]) and e.ids and e.ids[-1] == self.policy.eos_id:
                    seen.add(e.text)
                    kept.append(e)
        self.pool = (self.pool + kept) if cfg.accumulate else kept
        metrics = {"search_accuracy": res.accuracy(ctx.task), "search_tokens": res.mean_tokens,
                   "search_time_s": t_search, "search_tokens_per_s": res.stats["tokens_per_s"],
                   "kept": len(kept), "pool": len(self.pool)}
        data = self.demos + self.pool
        if not data:
            return metrics
        self.policy.model.train()
        t1, ntok, losses = time.time(), 0, []
        total = cfg.steps * cfg.sft_steps
        for j in range(cfg.sft_steps):
            set_lr(self.opt, lr_at(step * cfg.sft_steps + j, total, cfg.lr, cfg.schedule, cfg.warmup))
            idx = torch.randint(len(data), (cfg.batch_size,), generator=gen).tolist()
            out = sft_update(self.policy, self.opt, [data[i] for i in idx], cfg.max_grad_norm)
            losses.append(out["loss"])
            ntok += out["tokens"]
        metrics.update({"loss": sum(losses) / len(losses), "lr": self.opt.param_groups[0]["lr"],
                        "tokens_per_s": ntok / max(time.time() - t1, 1e-9)})
        return metrics

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "pool": self.pool}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.pool = state["pool"]


@PHASES.register("expert_iteration", ExpertIterationConfig, requires={"task": SingleTurnTask, "policy": TokenPolicy})
def make_expert_iteration(cfg: ExpertIterationConfig, ctx) -> ExpertIterationPhase:
    """Expert iteration: search, keep verified solutions, SFT on them, repeat."""
    return ExpertIterationPhase(cfg, ctx)


class SearchGRPOConfig(GRPOConfig):
    kind: str = "grpo_search"
    search: SerializeAsAny[SearchConfig] = Field(default_factory=lambda: search_config({}, "beam"),
                                                 description="strategy whose complete solutions form each problem's group")

    @field_validator("search", mode="before")
    @classmethod
    def _strategy_config(cls, v):
        return search_config(v, "beam")


class SearchGRPOPhase(OptimizerAndReference):
    """GRPO whose groups are the complete solutions of a search (at most ``group_size`` each)."""

    key_metrics = ("reward", "accuracy", "tokens_per_s")

    def __init__(self, cfg: SearchGRPOConfig, ctx):
        self.cfg, self.ctx, self.policy = cfg, ctx, ctx.policy
        self.opt = make_adamw(self.policy.model.parameters(), cfg.lr, cfg.weight_decay)
        self.scorer = None

    def on_start(self, step: int) -> None:
        if self.cfg.beta > 0 and self.reference is None:
            self.reference = frozen_copy(self.policy.model)

    def step(self, step: int, global_step: int) -> dict:
        cfg, ctx = self.cfg, self.ctx
        set_lr(self.opt, lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup))
        t0 = time.time()
        # collect: each problem's group is the set of complete solutions its search produced
        if self.scorer is None:
            self.scorer = search_scorer(cfg.search, ctx)
        gen = ctx.generator(global_step)
        problems = ctx.task.sample_problems(cfg.prompts_per_step, gen)
        # the learner re-scores log-probs at cfg.temperature: sample at the same one
        scfg = cfg.search.model_copy(update={"temperature": cfg.temperature})
        res = run_search(self.policy, ctx.task, problems, self.scorer, scfg, gen, workers=ctx.workers)
        dt = time.time() - t0
        episodes = []
        for i, cands in enumerate(res.candidates):
            group = cands[: cfg.group_size] or [res.episodes[i]]
            for e in group:
                e.group = i
                episodes.append(e)
        ntok = sum(res.tokens)
        stats = {"sample_time_s": dt, "sampled_tokens": ntok, "sample_tokens_per_s": ntok / max(dt, 1e-9)}
        # score
        ctx.rewards.score(episodes)
        metrics = batch_metrics(ctx.task, ctx.rewards, episodes)
        # advantages (the group's, on every action token) + update
        upd = group_update(self.policy, self.opt, episodes, self.reference, cfg, ctx.generator(global_step, salt=1))
        metrics.update(upd)
        metrics["lr"] = self.opt.param_groups[0]["lr"]
        metrics.update(throughput(stats, upd["trained_tokens"], t0))
        return metrics


@PHASES.register("grpo_search", SearchGRPOConfig, requires={"task": SingleTurnTask, "policy": TokenPolicy})
def make_grpo_search(cfg: SearchGRPOConfig, ctx) -> SearchGRPOPhase:
    """GRPO whose groups come from a search strategy (beam, MCTS, best-of-N ...)."""
    return SearchGRPOPhase(cfg, ctx)
