"""Verifier, built-in rewards, failing rewards, and the tasks."""

import json

import pytest
import torch

from warmstart.episode import Episode
from warmstart.errors import DataError
from warmstart.rewards import RewardSet
from warmstart.rewards.builtin import (
    ExactAnswerConfig,
    FormatConfig,
    LengthPenaltyConfig,
    exact_answer,
    format_reward,
    length_penalty,
)
from warmstart.tasks.arithmetic import ChainArithmetic, ChainArithmeticConfig, evaluate_chain
from warmstart.tasks.base import extract_answer, normalize_answer
from warmstart.tasks.jsonl import JsonlTask, JsonlTaskConfig


def ep(text, answer="7", n_tokens=None):
    e = Episode(prompt="p", prompt_ids=[1], info={"answer": answer})
    ids = list(range(n_tokens if n_tokens is not None else len(text)))
    e.add_turn(ids, [0.0] * len(ids), text)
    return e


@pytest.mark.parametrize("a,b", [("1,000", "1000"), ("3.0", "3"), ("1/2", "0.5"), ("$42", "42"), (" Paris ", "paris"), ("7.", "7")])
def test_normalize_answer_equal(a, b):
    assert normalize_answer(a) == normalize_answer(b)


def test_normalize_and_extract_edge_cases():
    assert normalize_answer("") is None and normalize_answer("3") != normalize_answer("4")
    assert extract_answer("1+2=3;#3") == "3"
    assert extract_answer("a #1 then #2\nmore") == "2"
    assert extract_answer("no marker") is None
    assert extract_answer("#### 1,234", "#") == "1,234"


def test_exact_format_length():
    f = exact_answer(ExactAnswerConfig(kind="exact_answer"))
    assert f(ep("3+4=7;#7")) == 1.0 and f(ep("#8")) == 0.0 and f(ep("seven")) == 0.0
    fmt = format_reward(FormatConfig(kind="format"))
    assert fmt(ep("1+2=3;#3")) == 1.0 and fmt(ep("1+2=3")) == 0.0
    lp = length_penalty(LengthPenaltyConfig(kind="length_penalty", target=10, scale=10))
    assert lp(ep("x", n_tokens=30)) == pytest.approx(2.0) and lp(ep("x", n_tokens=5)) == 0.0


def test_reward_set_weights_and_failure_reported_once(capsys):
    calls = {"n": 0}

    def broken(e):
        calls["n"] += 1
        raise RuntimeError("boom")

    rs = RewardSet([exact_answer(ExactAnswerConfig(kind="exact_answer")), broken], ["correct", "broken"], [2.0, 1.0])
    eps = rs.score([ep("#7"), ep("#1"), ep("#7")])
    assert [e.reward for e in eps] == [2.0, 0.0, 2.0]
    assert all(e.rewards["broken"] is None for e in eps)
    err = capsys.readouterr().err
    assert err.count("reward 'broken' failed (RuntimeError: boom)") == 1
    m = rs.metrics(eps)
    assert m["reward/correct"] == pytest.approx(2 / 3) and m["reward_failures/broken"] == 3


def two_turns(t1="#3", t2="#7"):
    e = Episode(prompt="p", prompt_ids=[1], info={"answer": "7"})
    e.add_turn([5, 6], [0.0, 0.0], t1)
    e.add_env([9])
    e.add_turn([7], [0.0], t2)
    return e


def test_batched_and_per_turn_reward_terms():
    from warmstart.episode import collate, turn_reward_matrix
    from warmstart.rewards import batched

    @batched
    def longest(eps):  # TRL-style: the whole batch in, one value per episode out
        n = max(len(e.text) for e in eps)
        return [float(len(e.text) == n) for e in eps]

    def per_turn(e):  # one value per policy turn
        return [0.5 * (k + 1) for k in range(len(e.turns))]

    rs = RewardSet([longest, per_turn], ["longest", "per_turn"], [1.0, 2.0])
    a, b = two_turns("#3", "#7"), two_turns("12;#3", "#7")
    rs.score([a, b])
    assert a.rewards["longest"] == 0.0 and b.rewards["longest"] == 1.0
    # per-turn values, times the weight, land in their turn; the episode total adds them up
    assert [t["per_turn"] for t in a.turn_rewards] == [1.0, 2.0]
    assert a.rewards["per_turn"] == 1.5 and a.info["episode_reward"] == 0.0 and a.reward == 3.0
    assert b.reward == 1.0 + 3.0
    assert turn_reward_matrix([a, b]).tolist() == [[1.0, 2.0], [1.0, 2.0]]
    batch = collate([a, b], pad_id=0, pad_to_multiple=1)
    assert batch.turn_index[0].tolist() == [0, 0, -1, 1]  # turn k's tokens carry index k


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", [1.0]])
def test_non_finite_or_malformed_reward_values_are_failures(bad, capsys):
    rs = RewardSet([lambda e: bad, lambda e: 1.0], ["bad", "ok"], [1.0, 1.0])
    (e,) = rs.score([two_turns()])  # [1.0] is one value for an episode of two turns
    assert e.rewards["bad"] is None and e.reward == 1.0
    assert rs.failures == {"bad": 1} and "reward 'bad' failed" in capsys.readouterr().err


def test_chain_arithmetic_solutions_verify_and_splits_are_disjoint():
    cfg = ChainArithmeticConfig(kind="chain_arithmetic", n_demos=300, n_test=100, worked_fraction=0.5)
    train = ChainArithmetic(cfg, "train")
    test = ChainArithmetic(cfg, "test")
    assert len(train.demos()) == 300 and len(test.eval_problems(100)) == 100
    assert not {p.prompt for p in train.problems} & {p.prompt for p in test.problems}
    for p in train.problems[:50]:
        assert train.is_correct(p.solution, p.answer)
    worked = sum(1 for p in train.problems if ";" in p.solution) / 300
    assert 0.35 < worked < 0.65
    fresh = train.sample_problems(50, torch.Generator().manual_seed(0))
    assert not {p.prompt for p in fresh} & {p.prompt for p in test.problems}
    assert evaluate_chain([3, 2, 5, 9, 3, 5, 2], list("+**+**"), 10)[0] == 0


def test_jsonl_task_and_errors(tmp_path):
    f = tmp_path / "gsm.jsonl"
    rows = [{"prompt": f"q{i}", "answer": str(i), "solution": f"think\n#### {i}"} for i in range(10)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    t = JsonlTask(JsonlTaskConfig(kind="jsonl", path=str(f)), "train")
    assert len(t.problems) == 9 and t.is_correct("so\n#### 3", "3")
    assert len(JsonlTask(JsonlTaskConfig(kind="jsonl", path=str(f)), "test").problems) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing 'answer'"):
        JsonlTask(JsonlTaskConfig(kind="jsonl", path=str(bad)), "train")
    with pytest.raises(DataError, match="does not exist"):
        JsonlTask(JsonlTaskConfig(kind="jsonl", path=str(tmp_path / "nope.jsonl")), "train")
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="not valid JSON"):
        JsonlTask(JsonlTaskConfig(kind="jsonl", path=str(bad)), "train")
