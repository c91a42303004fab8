"""Search strategies: spend more sampled tokens for better answers.

Each function takes ``(policy, task, problems, scorer, ...)`` and returns a
:class:`~warmstart.search.base.SearchResult`. All of them batch across problems (and across beams,
leaves and samples): one sampler call per wave, one scorer call per wave.

* :func:`best_of_n`     -- N samples, keep the best-scored;
* :func:`vote`          -- N samples, majority vote over answers (``weighted``: sum of scores);
* :func:`beam_search`   -- step-level beam: expand each beam by a few steps, keep the top-k by score;
* :func:`mcts_search`   -- PUCT tree search over reasoning steps (see :mod:`warmstart.search.mcts`);
* :func:`revise`        -- sequential revision: keep the steps the scorer trusts, rewrite the rest.

:class:`SearchConfig` names a strategy and its knobs for recipes; :func:`run_search` dispatches.
"""

from __future__ import annotations

import difflib
import time
from collections import defaultdict
from typing import ClassVar, Literal

import torch
from pydantic import Field, ValidationError

from warmstart.config import Strict
from warmstart.registry import SEARCH
from warmstart.rollout.workers import shard_generators, split_evenly
from warmstart.search.base import Expander, Partial, SearchResult
from warmstart.tasks.base import Problem, extract_answer, normalize_answer

class SearchConfig(Strict):
    """What every strategy takes; each strategy's own config (registered with it in ``SEARCH``)
    adds its knobs, so a misspelled knob is an error. In a recipe: ``search: {strategy: mcts,
    simulations: 32, ...}`` (see :func:`search_config`)."""

    strategy: str = Field(description="a registered strategy: best_of_n, vote, weighted_vote, beam, mcts, revise")
    scorer: str | None = Field(None, description="what scores candidates / guides the search: prm, orm, verifier or none "
                                                 "(default: the strategy's own default)")
    reward_model: str | None = Field(None, description="directory of the ORM/PRM; default: the run's artifact or reward_models/<scorer>")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1)

    default_scorer: ClassVar[str] = "prm"

    @property
    def scorer_kind(self) -> str:
        return self.scorer or self.default_scorer

    def knobs(self) -> dict:
        """Keyword arguments of the strategy function."""
        return self.model_dump(exclude={"strategy", "scorer", "reward_model"})

    @classmethod
    def for_budget(cls, budget_tokens: int, solution_tokens: float) -> dict:
        """Knob settings that spend about ``budget_tokens`` per problem, given the mean length of one
        full solution (overridden per strategy)."""
        return {}


class BestOfNConfig(SearchConfig):
    strategy: str = "best_of_n"
    n: int = Field(8, ge=1, description="samples per problem")
    default_scorer: ClassVar[str] = "orm"

    @classmethod
    def for_budget(cls, budget_tokens, solution_tokens):
        return {"n": max(1, int(round(max(budget_tokens / max(solution_tokens, 1.0), 1.0))))}


class VoteConfig(BestOfNConfig):
    strategy: str = "vote"
    weighted: bool = Field(False, description="sum of scores per answer instead of counts")
    default_scorer: ClassVar[str] = "none"


class WeightedVoteConfig(VoteConfig):
    strategy: str = "weighted_vote"
    weighted: bool = Field(True, description="sum of scores per answer instead of counts")
    default_scorer: ClassVar[str] = "orm"


Final = Literal["value", "vote", "visits"]


class StepSearchConfig(SearchConfig):
    """Knobs of the strategies that move step by step."""

    max_depth: int | None = Field(None, ge=1, description="most steps (default: the task's limit / 4 + 2)")
    max_step_tokens: int = Field(16, ge=1, description="longest step (tokens up to the separator)")
    final: Final = Field("vote", description="answer = the best-scored complete candidate ('value'), the score-weighted vote over "
                                             "the candidates' answers ('vote'), or (mcts) the end of the most-visited path ('visits')")


class BeamConfig(StepSearchConfig):
    strategy: str = "beam"
    beam_width: int = Field(4, ge=1, description="beams kept per problem")
    expand: int = Field(2, ge=1, description="steps sampled per beam and depth")

    @classmethod
    def for_budget(cls, budget_tokens, solution_tokens):
        ratio = max(budget_tokens / max(solution_tokens, 1.0), 1.0)
        expand = 2 if ratio >= 2 else 1
        return {"expand": expand, "beam_width": max(1, int(round(ratio / expand)))}


class MCTSConfig(StepSearchConfig):
    strategy: str = "mcts"
    budget_tokens: int | None = Field(None, ge=1, description="sampled tokens per problem at which a tree stops")
    simulations: int = Field(32, ge=1, description="simulations per problem")
    width: int = Field(4, ge=1, description="steps sampled when a node is expanded")
    leaves_per_tree: int = Field(4, ge=1, description="leaves expanded per tree per batched wave")
    c_puct: float = Field(1.5, gt=0, description="exploration constant")
    widen: bool = Field(True, description="sample more steps at a node whose sampled steps are all explored, while budget is left")
    value: Literal["scorer", "rollout"] = Field("scorer", description="node value from the scorer, or from a policy rollout scored by it")

    @classmethod
    def for_budget(cls, budget_tokens, solution_tokens):
        return {"budget_tokens": int(budget_tokens)}


class ReviseConfig(SearchConfig):
    strategy: str = "revise"
    budget_tokens: int | None = Field(None, ge=1, description="sampled tokens per problem at which revision stops")
    rounds: int = Field(2, ge=0, description="revision rounds after the first attempt")
    confident: float | None = Field(0.95, gt=0, le=1, description="once a problem's best attempt scores this much, its next attempts "
                                                                  "start afresh instead of rewriting it (None: always rewrite)")
    final: Literal["value", "vote"] = Field("vote", description="answer = the best-scored attempt or the score-weighted vote")

    @classmethod
    def for_budget(cls, budget_tokens, solution_tokens):
        return {"budget_tokens": int(budget_tokens)}


def search_config(raw, default_strategy: str = "mcts") -> SearchConfig:
    """Validate a recipe's ``search:`` block with its strategy's own config (for pydantic
    ``mode='before'`` validators: problems are raised as ValueError with a readable message)."""
    if isinstance(raw, SearchConfig):
        return raw
    raw = dict(raw or {})
    raw.setdefault("strategy", default_strategy)
    entry = SEARCH.get(str(raw["strategy"]))
    try:
        return entry.config.model_validate(raw)
    except ValidationError as ve:
        msgs = []
        for err in ve.errors():
            key = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                near = difflib.get_close_matches(str(err["loc"][-1]), list(entry.config.model_fields), n=1)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                msgs.append(f"'{key}' is not a knob of strategy '{entry.kind}'.{hint} Its knobs: "
                            f"{', '.join(sorted(entry.config.model_fields))}")
            else:
                msgs.append(f"'{key}': {err['msg']} (got {err.get('input')!r})")
        raise ValueError("; ".join(msgs)) from None


def _answer(text: str, task) -> str | None:
    return normalize_answer(extract_answer(text, task.answer_marker))


def pick_answer(x: Expander, task, cands: list[tuple[Partial, float]], final: str = "value",
                weights: list[float] | None = None) -> tuple[tuple[Partial, float], dict]:
    """Choose one of a problem's complete candidates ``(partial, score)``.

    ``'value'``: the best-scored one. ``'vote'``: the answer with the largest summed score wins (with
    equal scores, a majority vote); ties go to the answer the policy is surest of (its best mean
    log-prob); the best-scored candidate with that answer is returned. ``weights`` (default 1) count
    a candidate several times: a tree node that stands for several identical samples votes for each.
    Summing is what keeps a weak scorer from being over-optimised: as candidates multiply, one
    confidently wrong outlier can win an arg-max, but rarely outweighs several agreeing candidates.
    Returns the chosen candidate and ``info`` (``votes``, ``answer_voted`` when voting).
    """
    if final == "vote":
        tally: dict = defaultdict(float)
        conf: dict = defaultdict(lambda: -float("inf"))
        answers = [_answer(x.text(p), task) for p, _ in cands]
        for (p, s), a, w in zip(cands, answers, weights or [1.0] * len(cands)):
            if a is not None:
                tally[a] += s * w
                conf[a] = max(conf[a], sum(p.logprobs) / max(len(p.logprobs), 1))
        if tally:
            win = max(tally, key=lambda a: (tally[a], conf[a]))
            best = max((c for c, a in zip(cands, answers) if a == win), key=lambda c: c[1])
            return best, {"votes": dict(tally), "answer_voted": win}
        return max(cands, key=lambda c: c[1]), {"votes": {}, "answer_voted": None}
    return max(cands, key=lambda c: c[1]), {}


def _finish(x: Expander, chosen: list[Partial], scores: list[float], cands: list[list[tuple[Partial, float]]],
            name: str, t0: float, extra_info: list[dict] | None = None, stats: dict | None = None) -> SearchResult:
    eps = []
    for i, (p, s) in enumerate(zip(chosen, scores)):
        info = {"strategy": name, "score": s, "generated_tokens": x.tokens[i], "candidates": len(cands[i])}
        if extra_info:
            info.update(extra_info[i])
        eps.append(x.episode(p, **info))
    cand_eps = [[x.episode(p, score=s) for p, s in cs] for cs in cands]
    dt = time.time() - t0
    st = {"strategy": name, "time_s": dt, "sample_time_s": x.sample_time, "sampler_calls": x.calls,
          "generated_tokens": sum(x.tokens), "tokens_per_s": sum(x.tokens) / max(x.sample_time, 1e-9)}
    st.update(stats or {})
    return SearchResult(eps, cand_eps, list(x.tokens), st)


@SEARCH.register("best_of_n", BestOfNConfig)
def best_of_n(policy, task, problems: list[Problem], scorer, n: int = 8, temperature: float = 1.0, top_p: float = 1.0,
              generator=None) -> SearchResult:
    """N independent samples per problem (one batched call); the best-scored one is the answer."""
    t0 = time.time()
    x = Expander(policy, task, problems, temperature, top_p, generator)
    kids = x.expand([Partial(i) for i in range(len(problems))], n, full=True)
    flat = [k for ks in kids for k in ks]
    scores = scorer([problems[k.problem] for k in flat], [x.text(k) for k in flat])
    cands = [list(zip(ks, scores[i * n:(i + 1) * n])) for i, ks in enumerate(kids)]
    chosen = [max(cs, key=lambda c: c[1]) for cs in cands]
    return _finish(x, [c[0] for c in chosen], [c[1] for c in chosen], cands, "best_of_n", t0)


@SEARCH.register("weighted_vote", WeightedVoteConfig, "N samples, the answer with the largest summed score wins")
@SEARCH.register("vote", VoteConfig)
def vote(policy, task, problems: list[Problem], scorer=None, n: int = 8, weighted: bool = False,
         temperature: float = 1.0, top_p: float = 1.0, generator=None) -> SearchResult:
    """Self-consistency: N samples, the most frequent answer wins (``weighted``: the answer with the
    largest summed score). The returned episode is the best-scored sample with that answer."""
    from warmstart.search.scorers import ConstantScorer

    t0 = time.time()
    scorer = scorer if (weighted and scorer is not None) else ConstantScorer()
    x = Expander(policy, task, problems, temperature, top_p, generator)
    kids = x.expand([Partial(i) for i in range(len(problems))], n, full=True)
    flat = [k for ks in kids for k in ks]
    scores = scorer([problems[k.problem] for k in flat], [x.text(k) for k in flat])
    chosen, chosen_s, cands, infos = [], [], [], []
    for i, ks in enumerate(kids):
        cs = list(zip(ks, scores[i * n:(i + 1) * n]))
        (best, best_s), info = pick_answer(x, task, cs, "vote")
        chosen.append(best)
        chosen_s.append(best_s)
        cands.append(cs)
        infos.append(info)
    return _finish(x, chosen, chosen_s, cands, "weighted_vote" if weighted else "vote", t0, infos)


def keep_top_k(cands: list[tuple[Partial, float]], k: int) -> list[tuple[Partial, float]]:
    """The ``k`` best-scored candidates (stable: earlier ones win ties)."""
    order = sorted(range(len(cands)), key=lambda i: (-cands[i][1], i))
    return [cands[i] for i in order[:k]]


@SEARCH.register("beam", BeamConfig)
def beam_search(policy, task, problems: list[Problem], scorer, beam_width: int = 4, expand: int = 2,
                max_depth: int | None = None, max_step_tokens: int = 16, final: str = "vote", temperature: float = 1.0,
                top_p: float = 1.0, generator=None) -> SearchResult:
    """Step-level beam search: the root samples ``beam_width * expand`` first steps, then at each
    depth every live beam samples ``expand`` next steps (one batched call for all problems), the
    scorer (a PRM) scores every new prefix (one call), and each problem keeps its ``beam_width``
    best. Complete candidates leave the beam for the finished pool; the answer is chosen from that
    pool by :func:`pick_answer` (``final``)."""
    t0 = time.time()
    x = Expander(policy, task, problems, temperature, top_p, generator, max_step_tokens)
    max_depth = max_depth or default_depth(task)
    beams: list[list[Partial]] = [[Partial(i)] for i in range(len(problems))]
    finished: list[list[tuple[Partial, float]]] = [[] for _ in problems]
    kept_trace: list[list[list[float]]] = [[] for _ in problems]
    for depth in range(max_depth):
        live = [b for bs in beams for b in bs]
        if not live:
            break
        # the root is one beam: sample as many first steps as the full beam will expand at every
        # later depth, or a beam of width 8 would start from 2 samples (and, when both answer at once,
        # end there)
        kids = x.expand(live, expand if depth else beam_width * expand, full=depth == max_depth - 1)
        per_problem: dict[int, list[Partial]] = defaultdict(list)
        seen: set[tuple] = set()
        for ks in kids:
            for k in ks:
                if (k.problem, k.ids) not in seen:  # identical prefixes: keep one
                    seen.add((k.problem, k.ids))
                    per_problem[k.problem].append(k)
        flat = [k for i in sorted(per_problem) for k in per_problem[i]]
        scores = scorer([problems[k.problem] for k in flat], [x.text(k) for k in flat])
        by_p: dict[int, list[tuple[Partial, float]]] = defaultdict(list)
        for k, s in zip(flat, scores):
            by_p[k.problem].append((k, s))
        beams = [[] for _ in problems]
        for i, cs in by_p.items():
            top = keep_top_k(cs, beam_width)
            kept_trace[i].append([round(s, 4) for _, s in top])
            for k, s in top:
                (finished[i].append((k, s)) if k.done else beams[i].append(k))
    # problems whose beams never finished: complete the best live prefix
    chosen, chosen_s, infos = [], [], []
    for i in range(len(problems)):
        if not finished[i]:
            leftover = x.complete(beams[i][:1] or [Partial(i)])[0]
            s = scorer([problems[i]], [x.text(leftover)])[0]
            finished[i].append((leftover, s))
        (best, best_s), info = pick_answer(x, task, finished[i], final)
        chosen.append(best)
        chosen_s.append(best_s)
        infos.append({"beam_scores": kept_trace[i], **info})
    return _finish(x, chosen, chosen_s, finished, "beam", t0, infos)


@SEARCH.register("mcts", MCTSConfig)
def mcts_search(policy, task, problems: list[Problem], scorer, simulations: int = 32, width: int = 4,
                leaves_per_tree: int = 4, c_puct: float = 1.5, value: str = "scorer", final: str = "vote",
                widen: bool = True, max_depth: int | None = None, max_step_tokens: int = 16,
                budget_tokens: int | None = None, temperature: float = 1.0, top_p: float = 1.0, generator=None) -> SearchResult:
    """MCTS over reasoning steps, all trees searched together (one sampler call and one scorer call
    per wave). Stops a tree after ``simulations`` or once it has sampled ``budget_tokens``. Steps
    are sampled, so a fully explored node samples more (``widen``, see :class:`MCTS`).

    The answer comes from the tree's complete nodes (:func:`pick_answer`: the best-valued one, or
    the vote in which each node's value counts once per sample it stands for), or is the end of the
    most-visited path (``final='visits'``). When an unexpanded partial node is valued above every
    complete one (a small budget stopped the tree before its best line reached an answer), it is
    completed by sampling and joins the candidates: otherwise a cheap, low-valued answer would win
    only because it is finished. Completions' tokens count. Tree statistics go to ``info``."""
    from warmstart.search.mcts import MCTS, ReasoningStepEnv, iter_nodes, most_visited_path, tree_stats

    t0 = time.time()
    x = Expander(policy, task, problems, temperature, top_p, generator, max_step_tokens)
    max_depth = max_depth or default_depth(task)
    env = ReasoningStepEnv(x, scorer, width, max_depth, value)
    tree: MCTS | None = None

    def stop(t: int) -> bool:
        # a wave costs about leaves_per_tree expansions: stop when half of one more would cross the
        # budget, so trees land on it on average instead of always overshooting
        per_exp = sum(x.tokens) / max(tree.expansions, 1) if tree and tree.expansions else 0.0
        return x.tokens[t] + 0.5 * leaves_per_tree * per_exp >= budget_tokens

    sims = simulations if not budget_tokens else max(simulations, 10_000)
    tree = MCTS(env, sims, c_puct, leaves_per_tree, max_depth, stop if budget_tokens else None, widen)
    roots = tree.search([Partial(i) for i in range(len(problems))])
    cands: list[list[tuple[Partial, float]]] = []
    weights: list[list[float]] = []
    pick: dict[int, tuple[Partial, float]] = {}  # final='visits': the path's end, if complete
    to_finish: list[tuple[int, Partial]] = []  # (problem, partial state to complete by sampling)
    for i, root in enumerate(roots):
        nodes = list(iter_nodes(root))
        terms = sorted((n for n in nodes if n.terminal), key=lambda n: -n.visits)
        cands.append([(n.state, n.value) for n in terms])
        weights.append([n.prior for n in terms])  # how many samples each answer node stands for
        if final == "visits":
            end = most_visited_path(root)[-1]
            if end.terminal:
                pick[i] = (end.state, end.value)
            else:
                to_finish.append((i, end.state))
            continue
        frontier = [n for n in nodes if not n.terminal and not n.expanded]
        top = max(frontier, key=lambda n: (n.value, n.depth), default=None)
        if top is not None and (not terms or top.value > max(n.value for n in terms)):
            to_finish.append((i, top.state))
    if to_finish:
        done = x.complete([p for _, p in to_finish])
        sc = scorer([problems[i] for i, _ in to_finish], [x.text(d) for d in done])
        for (i, _), d, sd in zip(to_finish, done, sc):
            cands[i].append((d, sd))
            weights[i].append(1.0)
            if final == "visits":
                pick[i] = (d, sd)
    chosen, chosen_s, infos = [], [], []
    for i, root in enumerate(roots):
        info = {"tree": tree_stats(root)}
        if final == "visits":
            best, best_s = pick[i]
        else:
            (best, best_s), more = pick_answer(x, task, cands[i], final, weights[i])
            info.update(more)
        chosen.append(best)
        chosen_s.append(best_s)
        infos.append(info)
    stats = {"expansions": tree.expansions, "evaluations": tree.evaluations, "waves": tree.waves,
             "mcts_time_s": tree.time_s, "expansions_per_s": tree.expansions / max(tree.time_s, 1e-9)}
    return _finish(x, chosen, chosen_s, cands, "mcts", t0, infos, stats)


@SEARCH.register("revise", ReviseConfig)
def revise(policy, task, problems: list[Problem], scorer, rounds: int = 2, budget_tokens: int | None = None,
           final: str = "vote", confident: float | None = 0.95, temperature: float = 1.0, top_p: float = 1.0,
           generator=None) -> SearchResult:
    """Sequential revision: the policy writes a solution; each round the scorer (a PRM) scores every
    step prefix of the current best attempt, the steps before the first doubtful one (the lowest
    prefix score) are kept, and the policy rewrites the rest conditioned on them. The answer is
    chosen from all attempts by :func:`pick_answer` (``final``: the best-scored attempt, or the
    score-weighted vote over them). Runs ``rounds`` rounds, or until ``budget_tokens`` are spent.

    Once the scorer trusts a problem's best attempt (score >= ``confident``) there is no doubtful step
    left to rewrite: its next attempts start from scratch, independent evidence for the vote. (Rewriting
    a trusted attempt mostly reproduces it; those copies stacked votes on whichever of two saturated
    attempts the noise ranked first, and accuracy fell as rounds grew.)"""
    t0 = time.time()
    x = Expander(policy, task, problems, temperature, top_p, generator)
    first = x.complete([Partial(i) for i in range(len(problems))])
    sc = scorer(problems, [x.text(p) for p in first])
    best = list(zip(first, sc))
    hist: list[list[tuple[Partial, float]]] = [[b] for b in best]
    max_rounds = rounds if not budget_tokens else 10_000
    r = 0
    while r < max_rounds:
        active = [i for i in range(len(problems)) if not budget_tokens or x.tokens[i] < budget_tokens]
        if not active:
            break
        fresh = {i for i in active if confident is not None and best[i][1] >= confident}
        # step prefixes of each best attempt to revise, scored in one call
        prefixes, owner = [], []
        for i in active:
            if i in fresh:
                continue
            p = best[i][0]
            cut = [j + 1 for j, t in enumerate(p.ids) if t == x.sep]
            for c in cut:
                prefixes.append(Partial(i, p.ids[:c], p.logprobs[:c], 0, False))
                owner.append(i)
        ps = scorer([problems[q.problem] for q in prefixes], [x.text(q) for q in prefixes]) if prefixes else []
        starts = {}
        for i in active:
            mine = [(q, s) for q, s, o in zip(prefixes, ps, owner) if o == i]
            # keep everything before the lowest-scored prefix's last step (empty: restart)
            if mine and i not in fresh:
                j = min(range(len(mine)), key=lambda k: (mine[k][1], k))
                starts[i] = mine[j - 1][0] if j > 0 else Partial(i)
            else:
                starts[i] = Partial(i)
        new = x.complete([starts[i] for i in active])
        ns = scorer([problems[i] for i in active], [x.text(p) for p in new])
        for i, p, s in zip(active, new, ns):
            hist[i].append((p, s))
            if s > best[i][1]:
                best[i] = (p, s)
        r += 1
    chosen, infos = [], []
    for h in hist:
        c, info = pick_answer(x, task, h, final)
        chosen.append(c)
        infos.append({"rounds": len(h) - 1, "round_scores": [round(s, 4) for _, s in h], **info})
    return _finish(x, [c[0] for c in chosen], [c[1] for c in chosen], hist, "revise", t0, infos)


def default_depth(task) -> int:
    return max(2, task.max_new_tokens // 4 + 2)


def run_search(policy, task, problems: list[Problem], scorer, cfg: SearchConfig,
               generator: torch.Generator | None = None, workers=None) -> SearchResult:
    """Run the strategy ``cfg`` names on ``problems`` (its knobs from ``cfg``).

    ``workers`` (a pool from :mod:`warmstart.rollout.workers`, e.g. the run's ``ctx.workers``)
    splits the problems into its shards and searches them there; the results are merged in problem
    order, so the same seed and shards give the same result whatever the backend."""
    if workers is None or workers.trivial:
        return _search_shard(policy, generator=generator, task=task, problems=problems, scorer=scorer, cfg=cfg)
    t0 = time.time()
    gens = shard_generators(generator, workers.shards)
    parts = [(r, g) for r, g in zip(split_evenly(len(problems), workers.shards), gens) if len(r)]
    results = workers.map(policy, _search_shard, {"task": task, "scorer": scorer, "cfg": cfg},
                          [{"problems": problems[r.start:r.stop]} for r, _ in parts], [g for _, g in parts])
    return _merge_results(results, [r.start for r, _ in parts], time.time() - t0)


def _search_shard(policy, *, generator, task, problems, scorer, cfg) -> SearchResult:
    """One shard of a search (what a worker runs)."""
    return SEARCH.get(cfg.strategy).factory(policy, task, problems, scorer, generator=generator, **cfg.knobs())


def _merge_results(results: list[SearchResult], offsets: list[int], wall_s: float) -> SearchResult:
    """Concatenate shard results in problem order: groups renumbered to the whole problem list;
    counts summed, times and throughput taken over the whole (parallel) call."""
    episodes, candidates, tokens, stats = [], [], [], {}
    for res, off in zip(results, offsets):
        for e in res.episodes + [c for cs in res.candidates for c in cs]:
            e.group += off
        episodes += res.episodes
        candidates += res.candidates
        tokens += res.tokens
        for k, v in res.stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                stats[k] = stats.get(k, 0) + v
            else:
                stats.setdefault(k, v)
    for k in [k for k in stats if k.endswith("_per_s")]:  # a rate is the summed count over the wall time
        base = k[: -len("_per_s")]
        stats[k] = stats[base] / max(wall_s, 1e-9) if base in stats else stats[k]
    stats.update({"time_s": wall_s, "sample_time_s": wall_s, "tokens_per_s": sum(tokens) / max(wall_s, 1e-9)})
    return SearchResult(episodes, candidates, tokens, stats)
