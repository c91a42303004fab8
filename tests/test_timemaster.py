"""TimeMaster on a VLM policy: the task's problems and demos carry images, the reward is 0.9 x accuracy +
0.1 x format, GRPO learns to read plots, runs resume exactly, best-of-N works on images."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from warmstart.episode import Episode
from warmstart.policies.vlm import VLMPolicy, build_tiny_vlm
from warmstart.tasks.base import Problem
from warmstart.tasks.timeseries import PlotRenderer, class_accuracy, format_answer, synthetic_series

pytest.importorskip("aeon")


def _task(view, **kw):
    from warmstart.tasks.timemaster import TimeMasterConfig, TimeMasterTask

    cfg = TimeMasterConfig(view=view, perception_demos=8, ucr_repeats=2, n_test=3, **kw)
    return TimeMasterTask(cfg, "train"), TimeMasterTask(cfg, "test")


def test_image_and_numbers_views_differ_only_in_how_the_series_is_shown():
    img_train, img_test = _task("image")
    num_train, _ = _task("numbers")
    p, q = img_train.problems[0], num_train.problems[0]
    assert len(p.images) == 1 and p.images[0].shape == (40, 96, 3) and q.images == []
    assert "Series: " in q.prompt and "Series: " not in p.prompt
    assert p.answer == q.answer and p.solution == q.solution and p.info["classes"] == ["gun", "point"]
    # the held-out problems interleave the datasets: any prefix is balanced
    assert [x.info["dataset"] for x in img_test.eval_problems(3)] == ["GunPoint", "ArrowHead", "ItalyPowerDemand"]
    assert len(img_test.problems) == 9


def test_demo_episodes_carry_their_images_and_image_tokens():
    train, _ = _task("image")
    torch.manual_seed(0)
    pol = VLMPolicy(*build_tiny_vlm(hidden_size=32, num_layers=1, num_heads=4, image_size=16, patch_size=8, vision_hidden=16,
                                    vision_layers=1, vision_heads=2))
    eps = train.demo_episodes(pol)
    assert len(eps) == 8 + 2 * len(train.problems)
    for e in eps:
        assert len(e.images) == 1 and e.prompt_ids.count(pol.image_token_id) == 4
        assert pol.decode(e.ids).startswith("<think>") and e.ids[-1] == pol.eos_id


def test_reward_terms_weighted_as_in_the_paper():
    from warmstart.registry import REWARDS
    from warmstart.rewards import RewardSet

    acc = REWARDS.get("class_accuracy")
    fmt = REWARDS.get("class_format")
    rs = RewardSet([acc.factory(acc.config()), fmt.factory(fmt.config())], ["acc", "fmt"], [0.9, 0.1])
    eps = []
    for text in ["<think>rises</think><class>gun</class>", "<think>x</think><class>point</class>", "<class>gun</class>",
                 "<think>x</think><class>rifle</class>"]:
        e = Episode(prompt="", prompt_ids=[1], info={"answer": "gun", "classes": ["gun", "point"]})
        e.add_turn([2], [0.0], text)
        eps.append(e)
    rs.score(eps)
    assert [round(e.reward, 6) for e in eps] == [1.0, 0.1, 0.9, 0.0]


class RiseOrFall:
    """A tiny two-class plot task: is the plotted series going up or down?"""

    answer_marker = "<class>"
    max_new_tokens = 48

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        r = PlotRenderer(dpi=8)
        self.problems = []
        for i in range(n):
            shape = ("rise", "fall")[i % 2]
            img = r.render(synthetic_series(shape, 40, rng))
            self.problems.append(Problem("up or down?", shape, None, {"classes": ["rise", "fall"]}, images=[img]))

    def sample_problems(self, n, generator):
        idx = torch.randint(len(self.problems), (n,), generator=generator).tolist()
        return [self.problems[i] for i in idx]

    def eval_problems(self, n):
        return self.problems[:n]

    def is_correct(self, text, answer):
        return class_accuracy(text, answer) == 1.0

    def episode_metrics(self, texts):
        return {}


def _greedy_accuracy(pol, task):
    from warmstart.rollout import Sampling, rollout

    eps, _ = rollout(pol, task.eval_problems(64), sampling=Sampling(48, 0.0))
    return np.mean([task.is_correct(e.text, e.info["answer"]) for e in eps])


@pytest.mark.slow
def test_grpo_on_a_two_class_plot_task_raises_accuracy():
    """SFT teaches the answer format with *random* classes (so the warm start ignores the image and is
    right about half the time); GRPO with 0.9 x accuracy + 0.1 x format must learn to read the plot."""
    from warmstart.learn.grpo import GRPOConfig, GRPOPhase
    from warmstart.learn.supervised import sft_update
    from warmstart.registry import REWARDS
    from warmstart.rewards import RewardSet

    torch.manual_seed(0)
    pol = VLMPolicy(*build_tiny_vlm(hidden_size=32, num_layers=2, num_heads=4, image_size=16, patch_size=8,
                                    vision_hidden=16, vision_layers=1, vision_heads=2, max_position=64))
    task = RiseOrFall(64, seed=0)
    rng = np.random.default_rng(0)
    demos = []
    for p in task.problems:
        e = Episode(prompt=p.prompt, prompt_ids=pol.encode_prompt(p.prompt, p.images), images=p.images)
        text = format_answer("", str(rng.choice(["rise", "fall"])))
        ids = pol.encode(text) + [pol.eos_id]
        e.add_turn(ids, [0.0] * len(ids), text)
        demos.append(e)
    opt = torch.optim.AdamW(pol.model.parameters(), lr=3e-3)
    for _ in range(40):
        sft_update(pol, opt, [demos[i] for i in rng.integers(0, len(demos), 16)])
    before = _greedy_accuracy(pol, task)

    acc, fmt = REWARDS.get("class_accuracy"), REWARDS.get("class_format")
    rewards = RewardSet([acc.factory(acc.config()), fmt.factory(fmt.config())], ["acc", "fmt"], [0.9, 0.1])
    ctx = SimpleNamespace(policy=pol, task=task, rewards=rewards,
                          generator=lambda step, salt=0: torch.Generator().manual_seed(1000 * step + salt))
    cfg = GRPOConfig(steps=40, prompts_per_step=16, group_size=4, lr=3e-3, max_new_tokens=48)
    phase = GRPOPhase(cfg, ctx)
    phase.on_start(0)
    for k in range(cfg.steps):
        phase.step(k, k)
    after = _greedy_accuracy(pol, task)
    assert before < 0.75 and after > before + 0.2, (before, after)
