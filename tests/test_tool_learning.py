""""It learned" for the tool-call loop: on a tiny problem where calling a tool pays, GRPO over
tool-calling episodes (the one multi-turn rollout, a real tool executor, observations masked from the
loss, the final reward reaching the tool-call turn) raises the share of successful tool calls.

Why "grounded" answers and not exact ones: a tiny model needs hundreds of SFT steps before it copies a
number from an observation into its answer (benchmarks/RESULTS.md, issue 15), too slow for a test; the
tool-call choice itself (the right label or a wrong one) is learned in seconds."""

import random
from types import SimpleNamespace

import pytest
import torch

from warmstart.artifacts import Artifacts
from warmstart.engine.run import step_seed
from warmstart.episode import Episode
from warmstart.rewards import RewardSet
from warmstart.rollout import Sampling, rollout
from warmstart.tasks.base import Problem, TurnResult
from warmstart.tools import LocalTools, failure
from warmstart.tools.actions import format_action, parse_action

torch.set_num_threads(1)


class PeekTask:
    """A chart of one bar, labelled A; the episode pays when the policy answers after *reading the
    chart*: a successful ``read_value`` call (a grounded answer). The cold start calls the tool with the
    right label or a wrong one (``B``: the tool raises, an error observation) about equally often;
    calling it right is what pays."""

    answer_marker, max_new_tokens, max_turns = '"answer":', 80, 2

    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        self.problems = [self.problem(rng.randrange(10)) for _ in range(200)]
        self.tools = LocalTools("chart")

    @staticmethod
    def problem(d: int) -> Problem:
        return Problem("?\n", str(d), info={"chart": {"labels": ["A"], "values": [d]}})

    def sample_problems(self, n, generator):
        return [self.problems[i] for i in torch.randint(len(self.problems), (n,), generator=generator).tolist()]

    def respond(self, episode: Episode, turn: int) -> TurnResult:
        act, why = parse_action(episode.turn_texts[turn])
        calls = episode.info.setdefault("tool_calls", [])
        if act is not None and act.is_terminate:
            return TurnResult(rewards={"grounded": float(any(calls))}, done=True)
        if turn + 1 >= self.max_turns:
            return TurnResult(rewards={"grounded": 0.0}, done=True)
        res = failure("?", "bad_action", why) if act is None else self.tools.call(act.name, act.arguments, episode.info["chart"])
        calls.append(res.ok)
        return TurnResult(message=f"\nOBSERVATION: {res.observation()}\n", role="tool")

    def is_correct(self, text, answer):
        return False

    def episode_metrics(self, texts):
        return {}

    def turn_metrics(self, episodes):
        return {}


def _demos(policy, task: PeekTask, n: int, seed: int) -> list[Episode]:
    """Scripted trajectories executed against the tool: read bar A (or, half the time, the missing bar
    B), then answer what was read (0 after an error)."""
    rng, eos = random.Random(seed), [policy.eos_id]
    out = []
    for _ in range(n):
        p = task.problem(rng.randrange(10))
        e = Episode(prompt=p.prompt, prompt_ids=policy.encode_prompt(p.prompt), info={"answer": p.answer, **p.info})
        args = {"label": "A" if rng.random() < 0.5 else "B"}
        t = format_action("read_value", args)
        e.add_turn(policy.encode(t) + eos, [0.0] * (len(policy.encode(t)) + 1), t)
        res = task.tools.call("read_value", args, p.info["chart"])
        e.add_env(policy.encode_message(f"\nOBSERVATION: {res.observation()}\n", "tool"))
        t = format_action("terminate", {"answer": res.text if res.ok else "0"})
        e.add_turn(policy.encode(t) + eos, [0.0] * (len(policy.encode(t)) + 1), t)
        out.append(e)
    return out


def _measure(policy, task, seed: int) -> float:
    """Tool success: the share of 64 sampled episodes (T = 1) whose tool call succeeded."""
    probs = [task.problem(d) for d in range(8)] * 4
    eps, _ = rollout(policy, probs, task=task, samples=2, sampling=Sampling(task.max_new_tokens, 1.0),
                     generator=torch.Generator().manual_seed(seed))
    return sum(any(e.info.get("tool_calls", [])) for e in eps) / len(eps)


@pytest.mark.slow  # ~40-60 s on one loaded core: a short SFT, then GRPO steps of 64 two-turn episodes
def test_grpo_learns_to_call_the_tool_that_pays(tiny_policy_factory):
    from warmstart.learn.multi_turn import MultiTurnConfig, MultiTurnPhase
    from warmstart.learn.optim import make_adamw
    from warmstart.learn.supervised import sft_update

    task = PeekTask()
    policy = tiny_policy_factory(seed=0, max_position=320)
    demos = _demos(policy, task, 200, seed=1)
    opt = make_adamw(policy.model.parameters(), 1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):  # the action format; which label to read is a coin flip in the demos
        sft_update(policy, opt, [demos[i] for i in torch.randint(len(demos), (16,), generator=gen).tolist()])
    before = _measure(policy, task, seed=5)
    ctx = SimpleNamespace(workers=None, policy=policy, task=task, rewards=RewardSet([], [], []), artifacts=Artifacts(),
                          generator=lambda step, salt=0: torch.Generator().manual_seed(step_seed(0, step, salt)))
    # gamma 1: the reward of the answer turn reaches the tool-call turn, so the call itself is credited
    cfg = MultiTurnConfig(steps=8, prompts_per_step=8, group_size=8, lr=2e-3, algorithm="grpo", gamma=1.0, beta=0.0)
    phase = MultiTurnPhase(cfg, ctx)
    phase.on_start(0)
    for k in range(cfg.steps):
        phase.step(k, k)
    after = _measure(policy, task, seed=5)
    print(f"tool success {before:.2f} -> {after:.2f}")
    assert 0.15 <= before <= 0.85  # the cold start has both habits
    assert after >= before + 0.2, (before, after)
