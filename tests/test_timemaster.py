"""TimeMaster on a VLM policy: the task's problems and demos carry images, the reward is 0.9 x accuracy +
0.1 x format, GRPO learns to read plots, runs resume exactly, best-of-N works on images."""

from pathlib import Path
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
    from warmstart.tasks.timemaster import TimeMasterConfig, TimeMasterTask

    train = TimeMasterTask(TimeMasterConfig(datasets=["ItalyPowerDemand"], perception_demos=8, ucr_repeats=2), "train")
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
    step_separator = ","
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


def _accuracy(pol, task, temperature, samples=1):
    """Accuracy of ``samples`` answers per eval problem at ``temperature`` (0: greedy)."""
    from warmstart.rollout import Sampling, rollout

    eps, _ = rollout(pol, task.eval_problems(64), samples=samples, sampling=Sampling(48, temperature),
                     generator=torch.Generator().manual_seed(7))
    return float(np.mean([task.is_correct(e.text, e.info["answer"]) for e in eps]))


def _tiny_policy(seed=0):
    torch.manual_seed(seed)
    return VLMPolicy(*build_tiny_vlm(hidden_size=32, num_layers=2, num_heads=4, image_size=16, patch_size=8,
                                     vision_hidden=16, vision_layers=1, vision_heads=2, max_position=64))


@pytest.mark.slow
def test_grpo_on_a_two_class_plot_task_raises_accuracy():
    """A short SFT on the answer format (plus the right class) leaves a warm start that answers in
    format only some of the time at T=1 and has not learned to read the plot; GRPO with 0.9 x accuracy
    + 0.1 x format, through the engine's GRPO phase on image prompts, must raise sampled accuracy."""
    from warmstart.learn.grpo import GRPOConfig, GRPOPhase
    from warmstart.learn.supervised import sft_update
    from warmstart.registry import REWARDS
    from warmstart.rewards import RewardSet

    pol = _tiny_policy()
    task = RiseOrFall(64, seed=0)
    demos = []
    for p in task.problems:
        e = Episode(prompt=p.prompt, prompt_ids=pol.encode_prompt(p.prompt, p.images), images=p.images)
        text = format_answer("", p.answer)
        ids = pol.encode(text) + [pol.eos_id]
        e.add_turn(ids, [0.0] * len(ids), text)
        demos.append(e)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(pol.model.parameters(), lr=3e-3)
    for _ in range(100):
        sft_update(pol, opt, [demos[i] for i in rng.integers(0, len(demos), 16)])
    before = _accuracy(pol, task, 1.0, samples=4)

    acc, fmt = REWARDS.get("class_accuracy"), REWARDS.get("class_format")
    rewards = RewardSet([acc.factory(acc.config()), fmt.factory(fmt.config())], ["acc", "fmt"], [0.9, 0.1])
    ctx = SimpleNamespace(workers=None, policy=pol, task=task, rewards=rewards,
                          generator=lambda step, salt=0: torch.Generator().manual_seed(1000 * step + salt))
    cfg = GRPOConfig(steps=40, prompts_per_step=16, group_size=8, lr=2e-3, warmup=5, max_new_tokens=48)
    phase = GRPOPhase(cfg, ctx)
    phase.on_start(0)
    for k in range(cfg.steps):
        m = phase.step(k, k)
        assert abs(m["ratio"] - 1.0) < 1e-3  # one pass per batch: sampler and learner log-probs agree
    after = _accuracy(pol, task, 1.0, samples=4)
    assert after > before + 0.15, (before, after)


def test_best_of_n_searches_image_prompts():
    from warmstart.search.scorers import VerifierScorer
    from warmstart.search.strategies import best_of_n

    pol = _tiny_policy(1)
    task = RiseOrFall(6, seed=1)
    calls = []
    orig = pol.sample
    pol.sample = lambda *a, **k: calls.append(len(k.get("images") or [])) or orig(*a, **k)
    res = best_of_n(pol, task, task.problems, VerifierScorer(task), n=3, generator=torch.Generator().manual_seed(0))
    assert calls == [18]  # one batched call, every row with its problem's image
    assert len(res.episodes) == 6 and all(len(c) == 3 for c in res.candidates)
    assert all(e.images and e.prompt_ids.count(pol.image_token_id) == 4 for e in res.episodes)
    assert sum(res.tokens) > 0


@pytest.mark.slow
def test_vlm_run_resumes_with_identical_metrics(tmp_path, monkeypatch):
    """Kill a VLM run mid-GRPO (after a checkpoint), resume it: the same metrics as a run that never stopped."""
    import json

    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe
    from warmstart.learn.grpo import GRPOPhase

    root = Path(__file__).resolve().parents[1]
    # beta > 0: the KL reference scores image prompts too (and is checkpointed with the phase)
    sets = ["phases.grpo.steps=3", "phases.grpo.beta=0.05", "checkpoint.every=3", "eval.n=3"]
    recipe, raw = load_recipe(root / "recipes" / "timemaster.yaml", sets, smoke=True)
    run_recipe(recipe, raw, run_dir=tmp_path / "full", smoke=True, quiet=True)

    real = GRPOPhase.step

    def dies(self, step, global_step):
        if global_step == 4:  # after the checkpoint at global step 3 (SFT 2 + GRPO 1)
            raise KeyboardInterrupt
        return real(self, step, global_step)

    monkeypatch.setattr(GRPOPhase, "step", dies)
    recipe, raw = load_recipe(root / "recipes" / "timemaster.yaml", sets, smoke=True)
    with pytest.raises(Exception, match="interrupted"):
        run_recipe(recipe, raw, run_dir=tmp_path / "killed", smoke=True, quiet=True)
    monkeypatch.setattr(GRPOPhase, "step", real)
    recipe, raw = load_recipe(root / "recipes" / "timemaster.yaml", sets, smoke=True)
    run_recipe(recipe, raw, run_dir=tmp_path / "killed", resume=True, smoke=True, quiet=True)

    timing = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s", "time_s"}

    def rows(d):
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "killed") == rows(tmp_path / "full")
    grpo = [r for r in rows(tmp_path / "full") if r["phase"] == "grpo"]
    assert grpo[0]["kl"] == pytest.approx(0.0, abs=1e-6) and all(np.isfinite(r["kl"]) for r in grpo)
