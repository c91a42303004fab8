"""Search (issue 4): MCTS on a toy tree, beam keeps the top-k, PRM step labels, reward-model
save/load, every strategy counts its tokens, expert iteration learns, recipe smoke runs."""

import random

import pytest
import torch

from warmstart.search import MCTS, STRATEGIES, keep_top_k
from warmstart.search.base import Partial
from warmstart.search.mcts import best_action, most_visited_path, tree_stats
from warmstart.tasks.arithmetic import ChainArithmetic, ChainArithmeticConfig

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------------ MCTS


class ToyTree:
    """Two moves from the root, three actions each. The policy prior prefers 'a' (a trap: every leaf
    under 'a' is poor); the best leaf is 'ba' = 0.9. Inner states are uninformative (0.5)."""

    LEAVES = {"aa": 0.2, "ab": 0.3, "ac": 0.25, "ba": 0.9, "bb": 0.1, "bc": 0.2, "ca": 0.0, "cb": 0.4, "cc": 0.1}
    PRIOR = {"a": 0.7, "b": 0.1, "c": 0.2}

    def __init__(self):
        self.expand_calls = []

    def is_terminal(self, s):
        return len(s) == 2

    def expand(self, states):
        self.expand_calls.append(len(states))
        return [[(a, self.PRIOR[a], s + a) for a in "abc"] for s in states]

    def evaluate(self, states):
        return [self.LEAVES.get(s, 0.5) for s in states]


@pytest.mark.parametrize("leaves_per_tree", [1, 4])
def test_mcts_toy_tree_picks_best_action(leaves_per_tree):
    env = ToyTree()
    roots = MCTS(env, simulations=60, c_puct=1.0, leaves_per_tree=leaves_per_tree).search(["", ""])
    for root in roots:
        assert best_action(root) == "b"
        assert most_visited_path(root)[-1].state == "ba"
        st = tree_stats(root)
        assert st["nodes"] == 13 and st["terminal"] == 9 and st["root_visits"] == 60 and st["exhausted"]
    # both trees' leaves go through ONE expand call per wave
    assert max(env.expand_calls) >= 2
    if leaves_per_tree > 1:
        assert max(env.expand_calls) > 2


class ChainTree:
    """Every state has ONE child (a policy so sure that all its sampled steps agree); depth 6 ends."""

    def is_terminal(self, s):
        return len(s) == 6

    def expand(self, states):
        return [[("a", 1.0, s + "a")] for s in states]

    def evaluate(self, states):
        return [0.5] * len(states)


def test_mcts_wave_does_not_spend_simulations_on_one_leaf_twice():
    # with one child per node, the 4 selections of a wave all reach the same leaf: only the first
    # counts, so 6 simulations reach the terminal node instead of expanding ~2 levels
    tree = MCTS(ChainTree(), simulations=6, leaves_per_tree=4)
    roots = tree.search([""])
    st = tree_stats(roots[0])
    assert st["root_visits"] == 6 and st["terminal"] == 1 and st["depth"] == 6 and tree.expansions == 6


def test_mcts_respects_max_depth_and_stop():
    env = ToyTree()
    roots = MCTS(env, simulations=20, max_depth=1).search([""])
    assert tree_stats(roots[0])["depth"] == 1  # depth-1 nodes are never expanded
    calls = []
    roots = MCTS(ToyTree(), simulations=50, leaves_per_tree=1, stop=lambda t: calls.append(t) or len(calls) > 3).search([""])
    assert roots[0].visits == 3


# ------------------------------------------------------------------------------------------ beam


def test_keep_top_k_by_score():
    cands = [(Partial(0, (i,)), s) for i, s in enumerate([0.3, 0.9, 0.1, 0.9, 0.5])]
    top = keep_top_k(cands, 3)
    assert [s for _, s in top] == [0.9, 0.9, 0.5]
    assert [p.ids for p, _ in top] == [(1,), (3,), (4,)]  # ties: earlier first
    assert keep_top_k(cands, 10) == sorted(cands, key=lambda c: -c[1])


@pytest.fixture(scope="module")
def tiny():
    from warmstart.policies.lm import LMPolicyConfig, make_lm_policy

    pol = make_lm_policy(LMPolicyConfig(kind="lm", hidden_size=32, num_layers=2, max_position=64), seed=0)
    task = ChainArithmetic(ChainArithmeticConfig(n_terms=3, n_demos=8, n_test=8), split="test")
    return pol, task


class RecordingScorer:
    """Pseudo-random but deterministic scores per text; remembers every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, problems, texts):
        s = [random.Random(p.prompt + t).random() for p, t in zip(problems, texts)]
        self.calls.append((problems, texts, s))
        return s


def test_beam_keeps_top_k_of_each_depth(tiny):
    pol, task = tiny
    probs = task.eval_problems(3)
    sc = RecordingScorer()
    res = STRATEGIES["beam"](pol, task, probs, sc, beam_width=2, expand=3, max_depth=3,
                             generator=torch.Generator().manual_seed(0))
    for depth, (problems, texts, scores) in enumerate(sc.calls[:3]):
        for i, p in enumerate(probs):
            mine = sorted((s for q, s in zip(problems, scores) if q is p), reverse=True)
            if mine:
                assert res.episodes[i].info["beam_scores"][depth] == [round(s, 4) for s in mine[:2]]
    for e in res.episodes:  # the answer is the best-scored finished candidate
        assert e.info["score"] == max(c.info["score"] for c in res.candidates[probs.index(next(p for p in probs if p.prompt == e.prompt))])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_count_tokens(tiny, name):
    from warmstart.search.scorers import VerifierScorer

    pol, task = tiny
    probs = task.eval_problems(2)
    res = STRATEGIES[name](pol, task, probs, VerifierScorer(task), n=3, simulations=4, rounds=1, beam_width=2,
                           generator=torch.Generator().manual_seed(1))
    assert len(res.episodes) == 2 and all(t > 0 for t in res.tokens)
    for e, t in zip(res.episodes, res.tokens):
        assert e.info["generated_tokens"] == t and e.info["strategy"].endswith(name.split("_")[-1])
        e.check()
        assert len(e.ids) == len(e.logprobs) > 0
    if name in ("best_of_n", "vote", "weighted_vote"):
        assert res.tokens == [sum(len(c.ids) for c in cs) for cs in res.candidates]
    if name == "mcts":
        assert res.episodes[0].info["tree"]["root_visits"] == 4 and res.stats["expansions"] > 0


def test_mcts_token_budget(tiny):
    from warmstart.search.scorers import ConstantScorer

    pol, task = tiny
    probs = task.eval_problems(2)
    small = STRATEGIES["mcts"](pol, task, probs, ConstantScorer(), budget_tokens=40, width=2, leaves_per_tree=1,
                               generator=torch.Generator().manual_seed(0))
    big = STRATEGIES["mcts"](pol, task, probs, ConstantScorer(), budget_tokens=160, width=2, leaves_per_tree=1,
                             generator=torch.Generator().manual_seed(0))
    for res, b in ((small, 40), (big, 160)):  # a tree stops near its budget, or when nothing is left to expand
        assert all(t >= b // 2 or e.info["tree"]["exhausted"] for t, e in zip(res.tokens, res.episodes))
    assert small.mean_tokens < big.mean_tokens


# ------------------------------------------------------------------------------------ reward models


def test_prm_step_labels_hand_made():
    from warmstart.rewards.models import mc_step_labels, split_steps

    task = ChainArithmetic(ChainArithmeticConfig(n_terms=3, n_demos=1, n_test=1), split="test")
    # 4*7+6 = 8+6 = 4 (mod 10). A right first step, then a wrong second one.
    sol = "4*7=8;8+6=5;#5"
    assert split_steps(sol) == ["4*7=8;", "4*7=8;8+6=5;"]
    completions = [
        ["4*7=8;8+6=4;#4", "4*7=8;8+6=5;#5", "4*7=8;8+6=4;#4", "4*7=8;8+6=2;#2"],  # from the right step
        ["4*7=8;8+6=5;#5", "4*7=8;8+6=5;#5", "4*7=8;8+6=5;#5", "4*7=8;8+6=5;#5"],  # from the wrong one
    ]
    assert mc_step_labels(task, "4", completions) == [0.5, 0.0]
    assert mc_step_labels(task, "4", completions, hard=True) == [1.0, 0.0]


def test_reward_model_save_load_hf(tiny, tmp_path):
    from transformers import AutoModel

    from warmstart.rewards.models import RewardModel

    pol, _ = tiny
    rm = RewardModel.from_policy(pol, "prm")
    torch.nn.init.normal_(rm.head.weight, std=0.5)
    s0 = rm.score(["1+2=", "3*4="], ["1+2=3;", "3*4=2;#2"])
    rm.save(tmp_path / "prm")
    back = RewardModel.load(tmp_path / "prm")
    assert back.kind == "prm"
    assert back.score(["1+2=", "3*4="], ["1+2=3;", "3*4=2;#2"]) == pytest.approx(s0, abs=1e-6)
    assert AutoModel.from_pretrained(str(tmp_path / "prm")).config.hidden_size == 32


# -------------------------------------------------------------------------------- learning from search

def ei_recipe(path):
    """Answer-only sums of two digits (``3+4=`` -> ``#7``), 60 problems; only 8 carry a demo. SFT
    teaches the format, not the table (near chance); expert iteration (best-of-8, verifier-filtered)
    finds right answers and learns them. Accuracy is measured on the problems it iterates over (a
    self-improvement test, as in STaR: a 32-wide model cannot generalise a sum table from 60 facts)."""
    import json as _json

    rows = []
    rng = random.Random(0)
    for i in range(60):
        a, b = rng.randrange(10), rng.randrange(10)
        row = {"prompt": f"{a}+{b}=", "answer": str((a + b) % 10)}
        if i < 8:
            row["solution"] = f"#{(a + b) % 10}"
        rows.append(row)
    path.write_text("\n".join(_json.dumps(r) for r in rows))
    task = {"kind": "jsonl", "path": str(path), "test_path": str(path), "max_new_tokens": 4}
    return {
        "name": "ei-test", "seed": 0, "task": task,
        "policy": {"kind": "lm", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "max_position": 16},
        "rewards": [{"kind": "exact_answer"}],
        "phases": [
            {"kind": "sft", "role": "init", "steps": 40, "batch_size": 16, "lr": 5e-3, "warmup": 2},
            {"kind": "expert_iteration", "steps": 4, "problems_per_iter": 60, "sft_steps": 15, "batch_size": 32,
             "lr": 3e-3, "search": {"strategy": "best_of_n", "scorer": "verifier", "n": 8}},
        ],
        "eval": {"n": 60, "samples": 1, "temperature": 0.0},
        "checkpoint": {"every": 0},
    }


def test_expert_iteration_raises_accuracy(tmp_path):
    from warmstart.engine.config import validate_recipe
    from warmstart.engine.run import run_recipe

    raw = ei_recipe(tmp_path / "sums.jsonl")
    s = run_recipe(validate_recipe(raw), raw, run_dir=tmp_path / "ei", quiet=True)
    assert s["final"]["accuracy"] >= s["init"]["accuracy"] + 0.1, (s["init"]["accuracy"], s["final"]["accuracy"])


@pytest.mark.parametrize("recipe", ["search-expert-iteration", "search-grpo"])
def test_recipe_smoke(root, tmp_path, recipe):
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    r, raw = load_recipe(root / "recipes" / f"{recipe}.yaml", smoke=True)
    s = run_recipe(r, raw, run_dir=tmp_path / recipe, smoke=True, quiet=True)
    assert s["final"]["n"] == 8
    assert (tmp_path / recipe / "reward_models" / "prm" / "reward_head.safetensors").exists()
