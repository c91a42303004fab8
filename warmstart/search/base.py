"""What every search strategy shares: partial solutions, batched step expansion, results.

A search strategy takes a policy, a task, a list of problems and a :class:`~warmstart.search.scorers.Scorer`
and returns a :class:`SearchResult`: one chosen :class:`~warmstart.episode.Episode` per problem
(with the search's statistics in ``info``), every complete candidate it generated (the groups a
learner can train on), and the number of tokens it sampled per problem.

Partial solutions are :class:`Partial`: the generated ids so far (after the prompt) with their
behaviour log-probs. Expanding *one step* of many partials is ONE batched call of
``policy.sample(..., stop_ids=[separator])``: the KV-cache sampler stops each row at the task's
step separator, so beam search and MCTS pay one prefill + one decode loop per wave, not per node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from warmstart.episode import Episode
from warmstart.errors import WarmstartError
from warmstart.tasks.base import Problem


@dataclass(frozen=True)
class Partial:
    """A (partial) solution of problem ``problem``: generated ids after the prompt, their log-probs,
    how many steps it holds, and whether it is complete (ended with EOS or hit the length limit)."""

    problem: int
    ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    depth: int = 0
    done: bool = False


def separator_id(policy, task) -> int:
    """The token id of the task's step separator (it must be a single token)."""
    ids = policy.encode(task.step_separator)
    if len(ids) != 1:
        raise WarmstartError(
            f"step-level search needs the step separator {task.step_separator!r} to be one token; "
            f"the policy's tokenizer splits it into {len(ids)}."
        )
    return ids[0]


class Expander:
    """Samples continuations of partial solutions for a fixed list of problems, counting tokens.

    ``tokens[i]`` is how many tokens have been sampled for problem ``i`` so far (every strategy's
    cost). ``expand(partials, k, full=False)`` returns, for each partial, ``k`` children one step
    longer (or complete, when ``full``), from one batched sampler call.
    """

    def __init__(self, policy, task, problems: list[Problem], temperature: float = 1.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, max_step_tokens: int = 16,
                 max_new_tokens: int | None = None, batch_size: int | None = 512):
        self.policy, self.task, self.problems = policy, task, problems
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self.max_step_tokens = max_step_tokens
        self.max_new_tokens = max_new_tokens or task.max_new_tokens
        self.batch_size = batch_size
        self.sep = separator_id(policy, task)
        # a VLM's prompt ids hold its images' placeholder tokens: encode (and later sample) with the images
        self.prompt_ids = [policy.encode_prompt(p.prompt, p.images) if p.images else policy.encode_prompt(p.prompt)
                           for p in problems]
        self.tokens = [0] * len(problems)
        self.calls = 0
        self.sample_time = 0.0

    def expand(self, partials: list[Partial], k: int, full: bool = False,
               temperature: float | None = None) -> list[list[Partial]]:
        import time

        if not partials or k <= 0:
            return [[] for _ in partials]
        prompts, limits = [], []
        for p in partials:
            prompts.append(self.prompt_ids[p.problem] + list(p.ids))
            left = self.max_new_tokens - len(p.ids)
            limits.append(left)
        # one call for every row; the longest allowed continuation bounds the decode loop
        cap = max(limits) if full else min(self.max_step_tokens, max(limits))
        flat = [pr for pr in prompts for _ in range(k)]
        kw = {}
        if any(self.problems[p.problem].images for p in partials):
            kw["images"] = [list(self.problems[p.problem].images) for p in partials for _ in range(k)]
        t0 = time.time()
        out = self.policy.sample(flat, max(cap, 1), temperature=self.temperature if temperature is None else temperature,
                                 top_p=self.top_p, generator=self.generator, batch_size=self.batch_size,
                                 stop_ids=None if full else [self.sep], **kw)
        self.sample_time += time.time() - t0
        self.calls += 1
        res: list[list[Partial]] = []
        eos = self.policy.eos_id
        for i, p in enumerate(partials):
            kids = []
            for j in range(k):
                ids, lps = out.ids[i * k + j], out.logprobs[i * k + j]
                ids, lps = ids[: max(limits[i], 0)], lps[: max(limits[i], 0)]
                self.tokens[p.problem] += len(ids)
                new_ids = p.ids + tuple(ids)
                done = (len(ids) > 0 and ids[-1] == eos) or len(new_ids) >= self.max_new_tokens or full or not ids
                kids.append(Partial(p.problem, new_ids, p.logprobs + tuple(lps), p.depth + 1, done))
            res.append(kids)
        return res

    def complete(self, partials: list[Partial], temperature: float | None = None) -> list[Partial]:
        """Finish each unfinished partial with one continuation (finished ones are returned as is)."""
        todo = [i for i, p in enumerate(partials) if not p.done]
        out = list(partials)
        if todo:
            kids = self.expand([partials[i] for i in todo], 1, full=True, temperature=temperature)
            for i, k in zip(todo, kids):
                out[i] = k[0]
        return out

    def text(self, p: Partial) -> str:
        return self.policy.decode(list(p.ids))

    def episode(self, p: Partial, group: int | None = None, **info) -> Episode:
        prob = self.problems[p.problem]
        e = Episode(prompt=prob.prompt, prompt_ids=list(self.prompt_ids[p.problem]), images=list(prob.images),
                    group=p.problem if group is None else group,
                    info={"answer": prob.answer, **prob.info, **info})
        e.add_turn(list(p.ids), list(p.logprobs), self.text(p))
        return e


@dataclass
class SearchResult:
    """``episodes[i]``: the answer chosen for problem ``i`` (``info`` holds ``generated_tokens``,
    ``score`` and the strategy's statistics, e.g. the tree's). ``candidates[i]``: every complete
    solution the search produced for problem ``i`` (a learner's group). ``tokens[i]``: tokens sampled
    for problem ``i``. ``stats``: totals (time, sampler calls, expansions ...)."""

    episodes: list[Episode]
    candidates: list[list[Episode]]
    tokens: list[int]
    stats: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, task) -> float:
        return sum(task.is_correct(e.text, e.info["answer"]) for e in self.episodes) / max(len(self.episodes), 1)

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens) / max(len(self.tokens), 1)
