"""Chart question answering with tools (V-ToolRL, METHODS.md §E): text charts and rendered bar/line charts.

Each problem is a chart the generator keeps (labels ``A``, ``B``, ... and integer values) and a
question that needs exact values: a bar's value (``value``), the difference of two bars (``diff``),
the largest value (``max``), which bar is largest (``argmax``), the sum over a run of bars
(``sum``). The policy sees the chart only approximately and may call the chart tools
(:mod:`warmstart.tools.chart`) for exact readings, one JSON action per turn in the paper's format.
``view: text``: every value is shown rounded to a multiple of ``coarse``, as a reader estimates bar
heights. ``view: image``: the chart is a picture (``img_1``, a bar or line chart rendered from the
data, :func:`warmstart.tools.chart.render_chart`) for a vision-language policy; ``zoom`` and
``draw_line`` answer with new pictures (``img_2``, ``img_3``, ...) that join the episode::

    prompt   A~40 B~75 C~20 D~90 E~10 F~50 G~30 H~60\\nvalue of C?\\n
    turn 1   {"thought":"","actions":[{"name":"read_value","arguments":{"label":"C"}}]}</s>
    env      \\nOBSERVATION: 22\\n                           <- the tool's answer: no loss, no gradient
    turn 2   {"thought":"","actions":[{"name":"terminate","arguments":{"answer":"22"}}]}</s>

``terminate`` carries the answer (reward ``correct`` = 1 when it is exact). A turn that is not a
valid action, or a tool fault, gets an ``ERROR (...)`` observation and the episode goes on; the run
never stops for a tool. At most ``max_turns`` policy turns in training (6, as in the paper) and
``eval_max_turns`` at evaluation (3). With ``max_turns: 1`` the task is the text-only setting: the
policy must answer at once from the rounded chart.

Demonstrations (SFT cold start) are scripted trajectories *executed against the tool executor*
(the real tool server when ``tools.serve: http``), keeping only those whose answer is right, as the
paper filters its planner's trajectories. A ``direct_fraction`` share answers at once from the
rounded chart without tools, so the cold start mixes both habits and RL decides which pays.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Literal

import torch
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.episode import Episode
from warmstart.errors import ConfigError, warn
from warmstart.registry import TASKS
from warmstart.tasks.base import Problem, TurnResult, normalize_answer
from warmstart.tools import ERROR_KINDS, failure, next_image_id, toolset_class
from warmstart.tools.actions import final_answer, format_action, parse_action
from warmstart.tools.chart import ChartTools, render_chart
from warmstart.tools.server import ToolsConfig, open_tools, release_tools

QUESTIONS = ("value", "diff", "max", "argmax", "sum")


class ChartTaskConfig(PluginConfig):
    kind: str = "chart_qa"
    n_bars: int = Field(8, ge=2, le=26, description="bars per chart (labels A, B, ...)")
    max_value: int = Field(99, ge=10, description="values are integers in [0, max_value]")
    coarse: int = Field(5, ge=1, description="the prompt shows every value rounded to a multiple of this")
    questions: list[str] = Field(["value", "diff", "max"], min_length=1,
                                 description=f"question kinds, drawn uniformly ({', '.join(QUESTIONS)})")
    view: Literal["text", "image"] = Field("text", description="how the policy sees the chart: values rounded to `coarse` "
                                                                "in text, or a rendered picture (a vision-language policy)")
    charts: list[Literal["bar", "line"]] = Field(["bar"], min_length=1, description="view: image -- chart kinds, drawn uniformly")
    image_width: int = Field(96, ge=16, le=1024, description="view: image -- width of the rendered chart in pixels")
    image_height: int = Field(64, ge=16, le=1024, description="view: image -- height of the rendered chart in pixels")
    tokens_per_image: int = Field(64, ge=1, description="view: image -- an upper bound of the tokens one image takes "
                                                        "(the context check before another turn)")
    sum_span: int = Field(3, ge=2, le=26, description="sum questions add up to this many neighbouring bars (zoom shows 4)")
    n_train: int = Field(20000, ge=1, description="training charts (a fixed pool drawn with replacement)")
    n_demos: int = Field(3000, ge=0, description="charts turned into scripted SFT trajectories")
    n_test: int = Field(500, ge=1, description="held-out charts")
    direct_fraction: float = Field(0.3, ge=0, le=1, description="share of demos that answer at once from the rounded chart, without tools")
    max_turns: int = Field(6, ge=1, le=12, description="policy turns per training episode (1: text-only, no tool calls)")
    eval_max_turns: int = Field(3, ge=1, le=12, description="policy turns per evaluation episode")
    max_new_tokens: int = Field(80, ge=8, description="tokens per policy turn")
    max_context: int = Field(768, ge=64, description="tokens an episode may reach (the policy's context): an episode "
                                                      "that could not fit another observation and turn ends unanswered")
    schemas_in_prompt: bool = Field(False, description="give each problem the tools' JSON schemas, which a chat policy renders "
                                                        "with its template (apply_chat_template(tools=...)); a policy without a template ignores them")
    format_reward: float = Field(0.0, ge=0, description="weight of the per-turn format term (share of valid action turns); 0 = off, as in the paper")
    data_seed: int = Field(0, description="seed of the charts (fixed across runs)")
    tools: ToolsConfig = Field(default_factory=ToolsConfig, description="the tool set and where it runs")


def _round(v: int, step: int) -> int:
    return int(step * round(v / step))


class ChartTask:
    """Chart QA with tools: a multi-turn task whose environment is a tool executor."""

    answer_marker = '"answer":'
    step_separator = "OBSERVATION"

    def __init__(self, cfg: ChartTaskConfig, split: str = "train", seed: int = 0):
        bad = [q for q in cfg.questions if q not in QUESTIONS]
        if bad:
            raise ConfigError(f"task.questions: unknown kind(s) {bad}; known: {', '.join(QUESTIONS)}.")
        cls, _ = toolset_class(cfg.tools.toolset, cfg.tools.options)
        if not issubclass(cls, ChartTools):
            raise ConfigError(f"task.tools.toolset: chart_qa needs the 'chart' tool set (or a subclass of ChartTools), "
                              f"not {cfg.tools.toolset!r}.")
        self.cfg, self.split, self.seed = cfg, split, seed
        self.max_new_tokens = cfg.max_new_tokens
        self.max_turns = cfg.max_turns if split == "train" else cfg.eval_max_turns
        # train, test and demo charts come from separate streams of one seed: never the same chart
        offset = {"train": 0, "test": 1}.get(split, 2)
        self.problems = self._make(cfg.n_train if split == "train" else cfg.n_test, random.Random(cfg.data_seed * 3 + offset))
        self.tools = open_tools(cfg.tools) if self.max_turns > 1 or split == "train" else None
        if cfg.schemas_in_prompt and self.tools is not None:
            schemas = self.tools.schemas()
            for p in self.problems:
                p.tools = schemas

    # -- data
    def _chart(self, rng: random.Random) -> dict:
        labels = [chr(ord("A") + i) for i in range(self.cfg.n_bars)]
        return {"labels": labels, "values": [rng.randint(0, self.cfg.max_value) for _ in labels]}

    def _make(self, n: int, rng: random.Random) -> list[Problem]:
        out = []
        for _ in range(n):
            chart = self._chart(rng)
            q = rng.choice(self.cfg.questions)
            while q == "argmax" and chart["values"].count(max(chart["values"])) > 1:
                chart = self._chart(rng)  # "which bar is largest?" has one answer
            if self.cfg.view == "image":  # what the tools need to draw it (the state of every call)
                chart.update(kind=rng.choice(self.cfg.charts), ymax=self.cfg.max_value,
                             image=[self.cfg.image_width, self.cfg.image_height])
            labels, values = chart["labels"], chart["values"]
            if q == "value":
                a = rng.randrange(len(labels))
                text, ans, about = f"value of {labels[a]}?", values[a], [labels[a]]
            elif q == "diff":
                a, b = rng.sample(range(len(labels)), 2)
                text, ans, about = f"{labels[a]} minus {labels[b]}?", values[a] - values[b], [labels[a], labels[b]]
            elif q == "max":
                text, ans, about = "largest value?", max(values), []
            elif q == "argmax":
                text, ans, about = "largest bar?", labels[values.index(max(values))], []
            else:  # a run of neighbouring bars, as one zoom shows them
                k = rng.randint(2, min(self.cfg.sum_span, len(labels)))
                a = rng.randrange(len(labels) - k + 1)
                about = labels[a : a + k]
                text, ans = f"sum of {about[0]}..{about[-1]}?", sum(values[a : a + k])
            if self.cfg.view == "image":
                head = f"img_1: {chart['kind']} chart {labels[0]}-{labels[-1]}"
            else:
                head = " ".join(f"{lab}~{_round(v, self.cfg.coarse)}" for lab, v in zip(labels, values))
            out.append(Problem(prompt=f"{head}\n{text}\n", answer=str(ans),
                               info={"chart": chart, "question": q, "about": about}))
        return out

    def _shown(self, p: Problem) -> Problem:
        """The problem with its chart picture (view: image): rendered when drawn, not kept for the pool."""
        if self.cfg.view != "image":
            return p
        c = p.info["chart"]
        return dataclasses.replace(p, images=[render_chart(c["kind"], c["labels"], c["values"], c["ymax"], *c["image"])])

    def sample_problems(self, n: int, generator: torch.Generator) -> list[Problem]:
        idx = torch.randint(len(self.problems), (n,), generator=generator).tolist()
        return [self._shown(self.problems[i]) for i in idx]

    def eval_problems(self, n: int) -> list[Problem]:
        if n > len(self.problems):
            raise ConfigError(f"eval.n is {n} but task.n_test is {len(self.problems)}: raise task.n_test or lower eval.n.")
        return [self._shown(p) for p in self.problems[:n]]

    # -- checking
    def is_correct(self, text: str, problem_answer: str) -> bool:
        """``text`` is one turn or all turns joined: the answer is the last terminate's."""
        got = final_answer(_split_turns(text))
        return got is not None and normalize_answer(got) == normalize_answer(problem_answer)

    def episode_metrics(self, texts: list[str]) -> dict[str, float]:
        """Training-time shares from the policy's text alone (learners see no episode info here):
        valid actions per episode that are not ``terminate`` (tool calls), and the share answered."""
        if not texts:
            return {}
        calls = answered = 0
        for t in texts:
            acts = [parse_action(x)[0] for x in _split_turns(t)]
            calls += sum(a is not None and not a.is_terminate for a in acts)
            answered += any(a is not None and a.is_terminate for a in acts)
        return {"tool_calls_per_episode": calls / len(texts), "answered": answered / len(texts)}

    # -- the tool-call loop
    def respond(self, episode: Episode, turn: int) -> TurnResult:
        """Run the turn's action: a tool's observation as the next message, or the end (terminate)."""
        calls = episode.info.setdefault("tool_calls", [])
        act, why = parse_action(episode.turn_texts[turn])
        last = turn + 1 >= self.max_turns
        rewards = {}
        if self.cfg.format_reward:
            rewards["format"] = self.cfg.format_reward * float(act is not None)
        if act is not None and act.is_terminate:
            got = act.arguments.get("answer")
            ok = got is not None and normalize_answer(str(got)) == normalize_answer(episode.info["answer"])
            rewards["correct"] = float(ok)
            return TurnResult(rewards=rewards, done=True)
        if act is None:
            res = failure("?", "bad_action", why)
        elif self.tools is None:
            res = failure(act.name, "unknown_tool", "no tools in this setting: answer with terminate")
        else:
            res = self.tools.call(act.name, act.arguments, episode.info["chart"])
        calls.append({"name": res.name, "ok": res.ok, "error_kind": res.error_kind})
        message = _observation(res, episode.images)
        # characters bound tokens from above (a token is at least one character), + a margin for role markers
        need = (len(episode.prompt_ids) + len(episode.ids) + len(message) + 16 + self.max_new_tokens
                + self.cfg.tokens_per_image * len(res.images))
        if last or need > self.cfg.max_context:
            rewards["correct"] = 0.0  # out of turns (or context) without an answer
            return TurnResult(rewards=rewards, done=True)
        return TurnResult(rewards=rewards, message=message, role="tool", images=list(res.images))

    def turn_metrics(self, episodes: list[Episode]) -> dict[str, float]:
        """Accuracy (overall and per question kind) and tool use of finished episodes."""
        n = max(len(episodes), 1)
        correct = [self.is_correct("".join(e.turn_texts), e.info["answer"]) for e in episodes]
        calls = [c for e in episodes for c in e.info.get("tool_calls", [])]
        out = {"n": len(episodes), "accuracy": sum(correct) / n,
               "tool_calls_per_episode": len(calls) / n,
               "tool_success_rate": sum(c["ok"] for c in calls) / len(calls) if calls else 0.0,
               "tool_errors": float(sum(not c["ok"] for c in calls)),
               "answered": sum(final_answer(e.turn_texts) is not None for e in episodes) / n,
               "turns_per_episode": sum(len(e.turns) for e in episodes) / n}
        for q in self.cfg.questions:
            sel = [c for c, e in zip(correct, episodes) if e.info.get("question") == q]
            if sel:
                out[f"accuracy/{q}"] = sum(sel) / len(sel)
        for name in ("point", "read_value", "zoom", "draw_line"):
            out[f"calls/{name}"] = sum(c["name"] == name for c in calls) / n
        for kind in ERROR_KINDS:
            k = sum(c["error_kind"] == kind for c in calls)
            if k:
                out[f"tool_errors/{kind}"] = float(k)
        return out

    # -- SFT cold start: scripted trajectories executed against the tools
    def script(self, p: Problem, direct: bool) -> list[tuple[str, dict]]:
        """The planner's actions for a problem (before execution): tool calls, then terminate with a
        placeholder answer that :meth:`demo_episodes` fills from the observations."""
        q, about, chart = p.info["question"], p.info["about"], p.info["chart"]
        if direct:
            return []
        if q in ("value", "diff"):
            return [("read_value", {"label": lab}) for lab in about]
        if q == "sum":  # a text zoom reads the whole run at once; a picture's zoom is read bar by bar
            if self.cfg.view == "text":
                return [("zoom", {"first": about[0], "last": about[-1]})]
            return [("read_value", {"label": lab}) for lab in about]
        # largest value / bar: the line just under the highest rounded bar finds the candidates; read each
        top = max(_round(v, self.cfg.coarse) for v in chart["values"])
        y = max(top - (self.cfg.coarse + 1) // 2, -1)
        return [("draw_line", {"y": y})]

    def demo_episodes(self, policy) -> list[Episode]:
        """Scripted tool trajectories, executed by the task's tool executor, kept when right."""
        rng = random.Random(self.cfg.data_seed * 3 + 7)
        probs = self._make(self.cfg.n_demos, random.Random(self.cfg.data_seed * 3 + 2))
        eos = [policy.eos_id] if policy.eos_id is not None else []
        schemas = self.tools.schemas() if self.cfg.schemas_in_prompt else None
        out = []
        failed: dict[str, int] = {}
        first_failure = None
        for p in probs:
            direct = rng.random() < self.cfg.direct_fraction
            # the prompt exactly as the rollout encodes it (with the tool schemas when the task shows them)
            p = self._shown(p)
            if p.images:
                pids = policy.encode_prompt(p.prompt, p.images)
            else:
                pids = policy.encode_prompt(p.prompt, tools=schemas) if schemas else policy.encode_prompt(p.prompt)
            e = Episode(prompt=p.prompt, prompt_ids=pids, info={"answer": p.answer, **p.info}, images=list(p.images))
            values: dict[str, int] = {}
            plan = self.script(p, direct)
            ok = True
            while plan:
                name, args = plan.pop(0)
                text = format_action(name, args)
                e.add_turn(policy.encode(text) + eos, [0.0] * (len(policy.encode(text)) + len(eos)), text)
                res = self.tools.call(name, args, p.info["chart"])
                if not res.ok:
                    failed[res.error_kind] = failed.get(res.error_kind, 0) + 1
                    first_failure = first_failure or f"{name}({args}): {res.observation()}"
                    ok = False
                    break
                if name == "read_value":
                    values[args["label"]] = int(res.text)
                elif name == "zoom":
                    values.update({lab: int(v) for lab, v in (x.split(":") for x in res.text.split())})
                elif name == "draw_line":
                    above = res.text.split(":", 1)[1].split()
                    plan += [("read_value", {"label": lab}) for lab in above if lab != "none"]
                # the observation exactly as the rollout appends it (a chat policy wraps it as a tool turn)
                message = _observation(res, e.images)
                if res.images:
                    e.add_env(policy.encode_message(message, "tool", closed=bool(eos), images=res.images))
                    e.images = [*e.images, *res.images]
                else:
                    e.add_env(policy.encode_message(message, "tool", closed=bool(eos)))
            if not ok:
                continue
            answer = self._answer_from(p, values, direct)
            text = format_action("terminate", {"answer": answer})
            ids = policy.encode(text) + eos
            e.add_turn(ids, [0.0] * len(ids), text)
            if direct or normalize_answer(answer) == normalize_answer(p.answer):
                out.append(e)
        if failed:  # the run goes on with the rest, but a tool that fails its own script is worth knowing about
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            warn(f"task chart_qa: {sum(failed.values())} of {len(probs)} scripted demonstrations were dropped because a "
                 f"call to the {self.cfg.tools.toolset!r} tools failed ({kinds}); the first: {first_failure}")
        return out

    def _answer_from(self, p: Problem, values: dict[str, int], direct: bool) -> str:
        q, about, chart = p.info["question"], p.info["about"], p.info["chart"]
        seen = values if not direct else {lab: _round(v, self.cfg.coarse) for lab, v in zip(chart["labels"], chart["values"])}
        if q == "value":
            return str(seen[about[0]])
        if q == "diff":
            return str(seen[about[0]] - seen[about[1]])
        if q == "sum":
            return str(sum(seen[lab] for lab in about))
        if q == "argmax":
            return max(seen, key=seen.get) if seen else chart["labels"][0]
        return str(max(seen.values())) if seen else "0"

    def close(self) -> None:
        """Release the tool executor (the last user stops the server)."""
        if self.tools is not None:
            release_tools(self.tools)
            self.tools = None


def _observation(res, images: list) -> str:
    """The message after a tool call (the paper's ``OBSERVATION:``), naming the images it brings by
    the ids they get in the episode (``img_2`` after the prompt's ``img_1``, ...)."""
    ids = [next_image_id([*images, *res.images[:k]]) for k in range(len(res.images))]
    text = res.observation()
    return f"\nOBSERVATION: {' '.join(ids)}{': ' if ids and text else ''}{text}\n"


def _split_turns(text: str) -> list[str]:
    """Turn texts from their concatenation: each action is one JSON object, so split at '}{'."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(text[start : i + 1])
                start = i + 1
    return parts or [text]


@TASKS.register("chart_qa", ChartTaskConfig)
def make_chart_task(cfg: ChartTaskConfig, split: str = "train", seed: int = 0) -> ChartTask:
    """Chart questions needing exact values (text or rendered bar/line charts), answered with chart tools (point, read_value, zoom, draw_line, terminate)."""
    return ChartTask(cfg, split, seed)
