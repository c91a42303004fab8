"""TimeMaster (METHODS.md §J): classify real time series from their line plots, answering
``<think>..</think><class>..</class>``; SFT, then GRPO with reward 0.9 x accuracy + 0.1 x format.

The task (``kind: timemaster``) serves UCR sets shipped in the ``aeon`` wheel with their own
splits (GunPoint, ArrowHead, ItalyPowerDemand by default; stand-ins for TimerBed's sets, which aeon
does not ship). Each problem carries its plot as an image (``view: image``) or the series as digits
in the prompt (``view: numbers``, the "image >= numbers" comparison); everything else is equal.

Demonstrations (for SFT, with their images) are the UCR *train* series with templated reasoning
(:func:`~warmstart.tasks.timeseries.describe`), each repeated ``ucr_repeats`` times, mixed with
``perception_demos`` procedurally generated series of known shape class (rise, fall, peak, ...) in
the same format: a model trained from scratch cannot read plots from a few dozen real series, so it
learns to see trend, peaks and steps on the synthetic ones at the same time. (One mixed SFT phase
rather than pre-training then fine-tuning: the engine's SFT phase trains on the task's demos, and
mixing avoids forgetting perception while fitting 150 real series.) GRPO samples UCR train series;
evaluation is greedy on a fixed subset of each test split, reported per dataset
(``accuracy/<dataset>``) and as their mean (``accuracy_mean``; with equal subsets it equals ``accuracy``).

Rewards: ``class_accuracy`` (1 when the class in ``<class>`` is right) and ``class_format`` (1 when
the answer is ``<think>..</think><class>C</class>`` with C a valid class of that dataset), weighted
0.9 / 0.1 in the recipe.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from warmstart.config import PluginConfig, RewardConfig
from warmstart.episode import Episode
from warmstart.errors import ConfigError
from warmstart.registry import REWARDS, TASKS
from warmstart.tasks.base import Problem
from warmstart.tasks.timeseries import (
    UCR_SETS,
    PlotRenderer,
    SeriesItem,
    build_prompt,
    class_accuracy,
    class_format,
    describe,
    format_answer,
    parse_answer,
    series_as_text,
    spec_of,
    synthetic_items,
    ucr_items,
)


class TimeMasterConfig(PluginConfig):
    kind: str = "timemaster"
    datasets: list[str] = Field(["GunPoint", "ArrowHead", "ItalyPowerDemand"], min_length=1,
                                description=f"UCR sets from the aeon wheel (known: {', '.join(UCR_SETS)})")
    view: Literal["image", "numbers"] = Field("image", description="the series as a plot image, or as digits in the prompt")
    n_points: int = Field(32, ge=4, le=512, description="numbers view: values after downsampling (one digit each)")
    dpi: int = Field(16, ge=4, le=300, description="plot resolution: 6 x 2.5 in at this dpi (16 -> 96 x 40 px)")
    definitions: bool = Field(True, description="give each class's one-line definition in the prompt")
    perception_demos: int = Field(800, ge=0, description="synthetic shape-class demos mixed into the SFT demos")
    ucr_repeats: int = Field(4, ge=1, description="each UCR train series appears this many times among the SFT demos")
    n_test: int = Field(100, ge=1, description="held-out series per dataset (a fixed subset of its test split)")
    max_new_tokens: int = Field(64, ge=8, description="answer length limit")
    data_seed: int = Field(0, description="seed of the perception series and of the test subsets (fixed across runs)")


class TimeMasterTask:
    """UCR time-series classification from plots (or numbers), single turn."""

    answer_marker = "<class>"
    step_separator = ","  # the templated reasoning lists its observations: "rises, 1 peak, max mid"

    def __init__(self, cfg: TimeMasterConfig, split: str = "train", seed: int = 0):
        unknown = [d for d in cfg.datasets if d not in UCR_SETS]
        if unknown:
            raise ConfigError(f"task.datasets: unknown UCR set(s) {unknown}; known: {', '.join(UCR_SETS)}.")
        self.cfg, self.split, self.seed = cfg, split, seed
        self.max_new_tokens = cfg.max_new_tokens
        self._renderer = PlotRenderer(dpi=cfg.dpi) if cfg.view == "image" else None
        if split == "test":
            per = [[self.problem(it) for it in ucr_items(d, "test", cfg.n_test, cfg.data_seed)] for d in cfg.datasets]
            # interleave the datasets so that the first n problems are balanced for any n
            self.problems = [p for group in zip(*[g + [None] * (max(map(len, per)) - len(g)) for g in per]) for p in group if p]
        else:
            self.train_items = [it for d in cfg.datasets for it in ucr_items(d, "train")]
            self.problems = [self.problem(it) for it in self.train_items]

    # ------------------------------------------------------------------------------------ problems
    def problem(self, it: SeriesItem) -> Problem:
        """The prompt (and image) of one series, with its class as the answer and the templated
        reasoning as the solution."""
        spec = spec_of(it.dataset)
        classes = [c for c, _ in spec.classes.values()]
        info = {"dataset": it.dataset, "subset": it.dataset, "classes": classes, "index": it.index}
        solution = format_answer(describe(it.series), it.label)
        if self.cfg.view == "image":
            prompt = build_prompt(spec, len(it.series), None, self.cfg.definitions)
            return Problem(prompt, it.label, solution, info, images=[self._renderer.render(it.series)])
        prompt = build_prompt(spec, len(it.series), series_as_text(it.series, self.cfg.n_points), self.cfg.definitions)
        return Problem(prompt, it.label, solution, info)

    def sample_problems(self, n: int, generator: torch.Generator) -> list[Problem]:
        """``n`` UCR train problems drawn with replacement."""
        idx = torch.randint(len(self.problems), (n,), generator=generator).tolist()
        return [self.problems[i] for i in idx]

    def eval_problems(self, n: int) -> list[Problem]:
        """The first ``n`` held-out problems (datasets interleaved, so every dataset gets n / k)."""
        return self.problems[:n]

    def demo_episodes(self, policy) -> list[Episode]:
        """SFT episodes with their images: UCR train series x ``ucr_repeats`` plus the perception
        series; the completion (+EOS) is the policy's turn."""
        items = synthetic_items(self.cfg.perception_demos, self.cfg.data_seed + 1) if self.split != "test" else []
        probs = [self.problem(it) for it in items] + [p for p in self.problems for _ in range(self.cfg.ucr_repeats)]
        eos = [policy.eos_id] if policy.eos_id is not None else []
        cache: dict[int, list[int]] = {}  # repeats of one problem share their encoded prompt
        eps = []
        for p in probs:
            if id(p) not in cache:
                cache[id(p)] = policy.encode_prompt(p.prompt, p.images) if p.images else policy.encode_prompt(p.prompt)
            e = Episode(prompt=p.prompt, prompt_ids=list(cache[id(p)]), images=list(p.images),
                        info={"answer": p.answer, **p.info})
            ids = policy.encode(p.solution) + eos
            e.add_turn(ids, [0.0] * len(ids), p.solution)
            eps.append(e)
        return eps

    # ------------------------------------------------------------------------------------ checking
    def is_correct(self, text: str, problem_answer: str) -> bool:
        return class_accuracy(text, problem_answer) == 1.0

    def episode_metrics(self, texts: list[str]) -> dict[str, float]:
        """Share of answers in the ``<think>..</think><class>..</class>`` format."""
        if not texts:
            return {}
        return {"well_formed": sum(parse_answer(t)[0] is not None for t in texts) / len(texts)}


@TASKS.register("timemaster", TimeMasterConfig)
def make_timemaster(cfg: TimeMasterConfig, split: str = "train", seed: int = 0) -> TimeMasterTask:
    """TimeMaster: UCR series (aeon) as plots or numbers -> <think>..</think><class>..</class>."""
    return TimeMasterTask(cfg, split, seed)


# ----------------------------------------------------------------------------------------- rewards


class ClassAccuracyConfig(RewardConfig):
    kind: str = "class_accuracy"


@REWARDS.register("class_accuracy", ClassAccuracyConfig)
def class_accuracy_reward(cfg: ClassAccuracyConfig):
    """1.0 when the class inside <class>..</class> is the reference class (TimeMaster's accuracy term)."""

    def fn(e: Episode) -> float:
        return class_accuracy(e.text, str(e.info["answer"]))

    return fn


class ClassFormatConfig(RewardConfig):
    kind: str = "class_format"


@REWARDS.register("class_format", ClassFormatConfig)
def class_format_reward(cfg: ClassFormatConfig):
    """1.0 for <think>..</think><class>C</class> with C one of the problem's classes (TimeMaster's format term)."""

    def fn(e: Episode) -> float:
        classes = e.info.get("classes")
        if classes is None:
            raise KeyError("episode.info has no 'classes' (the task must list each problem's valid class names)")
        return class_format(e.text, classes)

    return fn

