"""``warmstart search`` and ``warmstart scaling``: test-time search on a saved policy.

``search`` runs one strategy at one token budget on held-out problems and reports accuracy, tokens
per problem and throughput. ``scaling`` sweeps every strategy over several budgets and writes JSON
rows ``{strategy, budget_tokens, accuracy, ...}`` plus a plot (accuracy vs generated tokens).

Budgets are sampled tokens per problem. best-of-N / voting / beam size their knob from the budget
and the mean length of one solution sampled at the search temperature (not the greedy one: a policy
whose greedy answer is short but whose samples often work the problem out would otherwise overspend
many times over); MCTS and revision stop once a problem has spent it.
Reward models are found in the checkpoint's run (its artifacts ``orm`` / ``prm``) unless given; a
sweep on a run without them runs the strategies that need none and says which it skipped and why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from warmstart.engine.eval import build_task
from warmstart.errors import ConfigError, WarmstartError
from warmstart.policies import load_policy
from warmstart.registry import SCORERS, SEARCH
from warmstart.rewards.models import RewardModel, find_reward_model
from warmstart.rollout import Sampling, rollout
from warmstart.search.scorers import make_scorer, needs_reward_model
from warmstart.search.strategies import run_search

class SearchSession:
    """A loaded policy, task, held-out problems and reward models, reused across runs."""

    def __init__(self, checkpoint, task: str, n: int = 200, sets: list[str] | None = None,
                 orm: str | None = None, prm: str | None = None, temperature: float = 0.8, seed: int = 0):
        if not Path(checkpoint).is_dir():
            raise WarmstartError(f"checkpoint {str(checkpoint)!r} is not a directory.")
        self.task, _ = build_task(task, sets)
        self.policy = load_policy(checkpoint)
        self.problems = self.task.eval_problems(n)
        self.rm_paths = {"orm": orm or find_reward_model(checkpoint, "orm"), "prm": prm or find_reward_model(checkpoint, "prm")}
        self._rms: dict = {}
        self.temperature, self.seed = temperature, seed
        self._greedy = None
        self._unit = None

    def _one_each(self, temperature: float, generator=None) -> dict:
        """One solution per problem: accuracy, mean tokens, throughput."""
        t0 = time.time()
        eps, st = rollout(self.policy, self.problems, sampling=Sampling(self.task.max_new_tokens, temperature), generator=generator)
        acc = sum(self.task.is_correct(e.text, p.answer) for e, p in zip(eps, self.problems)) / len(eps)
        return {"accuracy": acc, "tokens": st["sampled_tokens"] / len(eps),
                "tokens_per_s": st["sample_tokens_per_s"], "time_s": time.time() - t0}

    def solution_tokens(self) -> float:
        """Mean length of one solution sampled at the search temperature: the budget unit; computed once."""
        if self._unit is None:
            self._unit = self._one_each(self.temperature, torch.Generator().manual_seed(self.seed + 1))["tokens"]
        return self._unit

    def greedy(self) -> dict:
        """Greedy accuracy and mean greedy solution length; computed once."""
        if self._greedy is None:
            self._greedy = self._one_each(0.0)
        return self._greedy

    def missing_reward_model(self, kind: str) -> str | None:
        """Why scorer ``kind`` cannot run here (None when it can)."""
        if kind in SCORERS and needs_reward_model(kind) and self.rm_paths.get(kind) is None:
            return (f"it needs a {kind.upper()} and none was found with the checkpoint (<run>/artifacts/{kind}); "
                    f"pass --{kind} DIR or train one with a `kind: train_{kind}` phase")
        return None

    def scorer(self, kind: str):
        SCORERS.get(kind)  # an unknown scorer is a clear error naming the known ones
        why = self.missing_reward_model(kind)
        if why:
            raise WarmstartError(f"scorer '{kind}': {why}, or pick another --scorer.")
        if needs_reward_model(kind) and kind not in self._rms:
            self._rms[kind] = RewardModel.load(self.rm_paths[kind])
        return make_scorer(kind, self.task, orm=self._rms.get("orm"), prm=self._rms.get("prm"))

    def config(self, strategy: str, budget: int, scorer: str | None = None, **knobs):
        """The strategy's validated config for ``budget`` tokens per problem (knobs sized from it)."""
        if strategy not in SEARCH:
            raise ConfigError(f"--strategy {strategy!r}: expected one of {', '.join(SEARCH.kinds())}.")
        cls = SEARCH.get(strategy).config
        raw = {"strategy": strategy, "scorer": scorer, "temperature": self.temperature,
               **cls.for_budget(budget, self.solution_tokens()), **knobs}
        try:
            return cls.model_validate(raw)
        except Exception as e:
            raise ConfigError(f"--strategy {strategy}: {e}") from None

    def run(self, strategy: str, budget: int, scorer: str | None = None, **knobs) -> dict:
        cfg = self.config(strategy, budget, scorer, **knobs)
        scorer = cfg.scorer_kind
        kw = cfg.knobs()
        gen = torch.Generator().manual_seed(self.seed)
        res = run_search(self.policy, self.task, self.problems, self.scorer(scorer), cfg, gen)
        correct = [int(self.task.is_correct(e.text, e.info["answer"])) for e in res.episodes]
        row = {"strategy": strategy, "scorer": scorer, "budget_tokens": budget, "accuracy": sum(correct) / len(correct),
               "generated_tokens": res.mean_tokens, "knobs": kw, "n": len(self.problems),
               "time_s": res.stats["time_s"], "tokens_per_s": res.stats["tokens_per_s"],
               "correct": "".join(map(str, correct))}  # per problem, for paired comparisons across budgets
        for k in ("expansions", "expansions_per_s", "waves"):
            if k in res.stats:
                row[k] = res.stats[k]
        return row


def search_main(checkpoint, task, strategy, budget, scorer=None, n=200, sets=None, orm=None, prm=None,
                temperature=0.8, seed=0, log=print) -> dict:
    """One strategy at one budget. When no ``scorer`` is named and the strategy's default one needs a
    reward model the run does not have, the search runs unguided (scorer ``none``) and says so."""
    s = SearchSession(checkpoint, task, n, sets, orm, prm, temperature, seed)
    if scorer is None and strategy in SEARCH:
        default = SEARCH.get(strategy).config.default_scorer
        why = s.missing_reward_model(default)
        if why:
            log(f"scorer '{default}' (the default of {strategy}) skipped: {why}. Searching with scorer 'none' (unguided).")
            scorer = "none"
    g = s.greedy()
    row = s.run(strategy, budget, scorer)
    row["greedy_accuracy"], row["greedy_tokens"] = g["accuracy"], g["tokens"]
    return row


def scaling_main(checkpoint, task, out: Path, budgets: list[int] | None = None, multiples=(1, 2, 4, 8),
                 strategies=None, n=200, sets=None, orm=None, prm=None, temperature=0.8, seed=0, log=print) -> list[dict]:
    """Every strategy at every budget; rows to ``out`` (JSON) and a plot beside it (``.png``).
    Strategies whose default scorer needs a reward model the run does not have are skipped (and
    listed, with the reason) unless they were asked for by name."""
    s = SearchSession(checkpoint, task, n, sets, orm, prm, temperature, seed)
    g = s.greedy()
    budgets = budgets or [int(round(m * s.solution_tokens())) for m in multiples]
    rows = [{"strategy": "greedy", "scorer": "none", "budget_tokens": int(round(g["tokens"])), "accuracy": g["accuracy"],
             "generated_tokens": g["tokens"], "n": len(s.problems), "time_s": g["time_s"], "tokens_per_s": g["tokens_per_s"]}]
    log(json.dumps(rows[0]))
    todo = strategies or SEARCH.kinds()
    if not strategies:
        for strat in list(todo):
            why = s.missing_reward_model(SEARCH.get(strat).config.default_scorer)
            if why:
                log(f"skipped {strat}: {why}")
                todo.remove(strat)
    for strat in todo:
        for b in budgets:
            rows.append(s.run(strat, b))
            log(json.dumps(rows[-1]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    plot_scaling(rows, out.with_suffix(".png"), f"{Path(checkpoint)} on {task} (n={len(s.problems)})")
    return rows


def paired_change(a: dict, b: dict) -> tuple[float, float]:
    """Accuracy change from row ``a`` to row ``b`` on the same problems, and its standard error
    (paired: the per-problem differences' std / sqrt(n)). A change within ~2 standard errors is
    what re-running with another seed could reverse."""
    x, y = [int(c) for c in a["correct"]], [int(c) for c in b["correct"]]
    d = [q - p for p, q in zip(x, y)]
    n = len(d)
    mean = sum(d) / n
    var = sum((v - mean) ** 2 for v in d) / max(n - 1, 1)
    return mean, (var / n) ** 0.5


def plot_scaling(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for strat in dict.fromkeys(r["strategy"] for r in rows):
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["generated_tokens"])
        label = f"{strat} ({rs[0]['scorer']})" if rs[0].get("scorer") not in (None, "none") else strat
        style = "k*" if strat == "greedy" else "o-"
        ax.plot([r["generated_tokens"] for r in rs], [r["accuracy"] for r in rs], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
