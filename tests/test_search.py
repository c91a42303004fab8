"""Search (issue 4): MCTS on a toy tree, beam keeps the top-k, PRM step labels, reward-model
save/load, every strategy counts its tokens, expert iteration learns, recipe smoke runs."""

import random

import pytest
import torch

from warmstart.registry import SEARCH
from warmstart.search import MCTS, beam_search, keep_top_k, mcts_search, revise, run_search
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


class SampledRoot:
    """The root's actions are sampled: the first draw gives two final answers (poor), the second a
    step that leads to a good answer. Depth-1 'x' has one terminal child 'xy' (0.9)."""

    def __init__(self):
        self.root_draws = 0

    def is_terminal(self, s):
        return s in ("a", "b", "xy")

    def expand(self, states):
        out = []
        for s in states:
            if s == "":
                self.root_draws += 1
                out.append([(a, 0.5, a) for a in (("a", "b") if self.root_draws == 1 else ("a", "x"))])
            else:
                out.append([("y", 1.0, s + "y")])
        return out

    def evaluate(self, states):
        return [{"a": 0.1, "b": 0.2, "x": 0.6, "xy": 0.9}.get(s, 0.5) for s in states]


def test_mcts_widens_a_node_whose_sampled_actions_are_explored():
    budget = lambda t: False  # noqa: E731  (a budget never reached: only exhaustion stops)
    narrow = MCTS(SampledRoot(), simulations=10, leaves_per_tree=1, stop=budget).search([""])[0]
    assert {c.state for c in narrow.children} == {"a", "b"} and narrow.exhausted  # stuck on two poor answers
    wide = MCTS(SampledRoot(), simulations=10, leaves_per_tree=1, stop=budget, widen=True).search([""])[0]
    assert {c.state for c in wide.children} == {"a", "b", "x"}  # 'a' again is not added twice
    assert most_visited_path(wide)[-1].state == "xy" and wide.exhausted
    # finite action sets still end: a widening that adds nothing marks the node exhausted
    roots = MCTS(ToyTree(), simulations=200, leaves_per_tree=1, stop=budget, widen=True).search([""])
    assert roots[0].exhausted and tree_stats(roots[0])["nodes"] == 13 and roots[0].visits < 200


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
    res = beam_search(pol, task, probs, sc, beam_width=2, expand=3, max_depth=3, final="value",
                             generator=torch.Generator().manual_seed(0))
    checked = 0
    for depth, (problems, texts, scores) in enumerate(sc.calls[:3]):
        for i, p in enumerate(probs):
            mine = sorted((s for q, s in zip(problems, scores) if q is p), reverse=True)
            if mine:  # a problem whose beams all finished earlier is not scored at this depth
                assert res.episodes[i].info["beam_scores"][depth] == [round(s, 4) for s in mine[:2]]
                checked += 1
    assert checked >= len(probs)  # at least the root depth of every problem was checked
    for e in res.episodes:  # the answer is the best-scored finished candidate
        assert e.info["score"] == max(c.info["score"] for c in res.candidates[probs.index(next(p for p in probs if p.prompt == e.prompt))])


class _Texts:
    """Stands in for an Expander in pick_answer: a partial's text is its ids joined."""

    def text(self, p):
        return "".join(map(str, p.ids))


def test_pick_answer_value_vs_score_weighted_vote():
    from warmstart.search.strategies import pick_answer

    task = ChainArithmetic(ChainArithmeticConfig(n_terms=3, n_demos=8, n_test=8), split="test")
    x = _Texts()

    def cand(text, score, lp=-1.0):
        return (Partial(0, tuple(text), (lp,) * len(text)), score)

    cs = [cand("1+2=3;#3", 0.9), cand("#5", 0.6), cand("2+3=5;#5", 0.5), cand("#7", 0.2)]
    (best, s), info = pick_answer(x, task, cs, "value")
    assert s == 0.9 and info == {}
    (best, s), info = pick_answer(x, task, cs, "vote")  # 5: 0.6 + 0.5 = 1.1 beats 3: 0.9
    assert info["answer_voted"] == "5" and s == 0.6 and info["votes"] == pytest.approx({"3": 0.9, "5": 1.1, "7": 0.2})
    # a tie in summed score goes to the answer the policy is surest of (higher mean log-prob)
    tie = [cand("#3", 0.5, lp=-2.0), cand("#4", 0.5, lp=-0.5)]
    assert pick_answer(x, task, tie, "vote")[1]["answer_voted"] == "4"
    # no parsable answer at all: the best-scored candidate
    (best, s), info = pick_answer(x, task, [cand("xx", 0.3), cand("yy", 0.4)], "vote")
    assert s == 0.4 and info["answer_voted"] is None


def test_beam_root_samples_the_whole_beam(tiny, counting_policy):
    pol, task = tiny
    probs = task.eval_problems(3)
    cp = counting_policy(pol)
    beam_search(cp, task, probs, RecordingScorer(), beam_width=4, expand=2, max_depth=3,
                       generator=torch.Generator().manual_seed(0))
    assert cp.calls[0] == 3 * 4 * 2  # not 3 * 2: the root is one beam but starts beam_width * expand lines


def test_mcts_completes_a_partial_line_valued_above_every_answer(tiny):
    pol, task = tiny
    probs = task.eval_problems(8)

    def prefer_partial(problems, texts):  # partial lines (ending at a step) look better than any answer
        return [0.9 if t.endswith(task.step_separator) else 0.1 for t in texts]

    res = mcts_search(pol, task, probs, prefer_partial, simulations=1, width=4, leaves_per_tree=1,
                             generator=torch.Generator().manual_seed(0))
    checked = 0
    for e, cs in zip(res.episodes, res.candidates):
        kids = e.info["tree"]["root_children"]
        partial = [c for c in kids if c["q"] == 0.9]
        if partial:  # one root expansion stopped the tree: its best partial line was completed by sampling
            checked += 1
            assert len(cs) == e.info["tree"]["terminal"] + 1
            assert task.step_separator in cs[-1].text and cs[-1].ids  # it extends a partial step
        else:  # answers only, or (no answer at all) the best partial line completed
            assert len(cs) == max(e.info["tree"]["terminal"], 1)
    assert checked > 0
    assert all(len(e.ids) > 0 for e in res.episodes)


SMALL_KNOBS = {"best_of_n": {"n": 3}, "vote": {"n": 3}, "weighted_vote": {"n": 3}, "beam": {"beam_width": 2},
               "mcts": {"simulations": 4}, "revise": {"rounds": 1}}


def test_every_registered_strategy_is_tested():
    assert sorted(SEARCH.kinds()) == sorted(SMALL_KNOBS)


@pytest.mark.parametrize("name", sorted(SMALL_KNOBS))
def test_strategies_count_tokens(tiny, name):
    from warmstart.search.scorers import VerifierScorer

    pol, task = tiny
    probs = task.eval_problems(2)
    cfg = SEARCH.get(name).config(strategy=name, **SMALL_KNOBS[name])
    res = run_search(pol, task, probs, VerifierScorer(task), cfg, torch.Generator().manual_seed(1))
    assert len(res.episodes) == 2 and all(t > 0 for t in res.tokens)
    for e, t in zip(res.episodes, res.tokens):
        assert e.info["generated_tokens"] == t and e.info["strategy"] == name
        e.check()
        assert len(e.ids) == len(e.logprobs) > 0
    if name in ("best_of_n", "vote", "weighted_vote"):
        assert res.tokens == [sum(len(c.ids) for c in cs) for cs in res.candidates]
        assert all(len(cs) == 3 for cs in res.candidates)
    if name == "mcts":
        assert res.episodes[0].info["tree"]["root_visits"] == 4 and res.stats["expansions"] > 0


def test_misspelled_search_knob_is_a_recipe_error():
    from warmstart.errors import ConfigError
    from warmstart.search import search_config

    assert search_config({"strategy": "mcts", "simulations": 5}).simulations == 5
    with pytest.raises(ValueError, match="'simulatons' is not a knob of strategy 'mcts'. Did you mean 'simulations'"):
        search_config({"strategy": "mcts", "simulatons": 5})
    with pytest.raises(ValueError, match="'n' is not a knob of strategy 'beam'"):
        search_config({"strategy": "beam", "n": 5})  # best_of_n's knob, not beam's
    with pytest.raises(ConfigError, match="unknown search strategy kind 'mtcs'. Did you mean 'mcts'"):
        search_config({"strategy": "mtcs"})


def test_mcts_token_budget(tiny):
    from warmstart.search.scorers import ConstantScorer

    pol, task = tiny
    probs = task.eval_problems(2)
    small = mcts_search(pol, task, probs, ConstantScorer(), budget_tokens=40, width=2, leaves_per_tree=1,
                               generator=torch.Generator().manual_seed(0))
    big = mcts_search(pol, task, probs, ConstantScorer(), budget_tokens=160, width=2, leaves_per_tree=1,
                             generator=torch.Generator().manual_seed(0))
    for res, b in ((small, 40), (big, 160)):  # a tree stops near its budget, or when nothing is left to expand
        assert all(t >= b // 2 or e.info["tree"]["exhausted"] for t, e in zip(res.tokens, res.episodes))
    assert small.mean_tokens < big.mean_tokens


# ------------------------------------------------------------------------------------ reward models


def test_prm_step_labels_hand_made():
    from warmstart.learn.reward_models import mc_step_labels, split_steps

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

def test_expert_iteration_raises_accuracy(tmp_path, sums_recipe):
    from warmstart.engine.config import validate_recipe
    from warmstart.engine.run import run_recipe

    raw = sums_recipe(tmp_path / "sums.jsonl", {"kind": "expert_iteration", "steps": 4, "problems_per_iter": 60,
                                                 "sft_steps": 15, "batch_size": 32, "lr": 3e-3,
                                                 "search": {"strategy": "best_of_n", "scorer": "verifier", "n": 8}})
    s = run_recipe(validate_recipe(raw), raw, run_dir=tmp_path / "ei", quiet=True)
    assert s["final"]["accuracy"] >= s["init"]["accuracy"] + 0.1, (s["init"]["accuracy"], s["final"]["accuracy"])


def test_paired_change_hand_computed():
    from warmstart.engine.search_cli import paired_change

    d, se = paired_change({"correct": "1100"}, {"correct": "1011"})  # per-problem diffs 0, -1, +1, +1
    assert d == pytest.approx(0.25) and se == pytest.approx((2.75 / 3 / 4) ** 0.5)


class ScriptedPolicy:
    """Writes the same three-step solution for every prompt (characters as token ids, 0 = EOS) and
    records the prompts of every sampler call: revision's behaviour in isolation."""

    eos_id = 0
    SOLUTION = "1+2=3;3*2=6;6+1=7;#7"

    def __init__(self):
        self.calls = []

    def encode_prompt(self, prompt):
        return [ord(c) for c in prompt + "|"]

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i)

    def sample(self, prompts, max_new, temperature=1.0, top_p=1.0, generator=None, batch_size=None, stop_ids=None):
        from warmstart.policies.sampler import Samples

        self.calls.append([list(p) for p in prompts])
        out = []
        for p in prompts:
            written = self.decode(p).split("|", 1)[1]  # what the solution holds so far
            rest = [ord(c) for c in self.SOLUTION[len(written):]] + [0]
            if stop_ids:
                cut = next((j + 1 for j, t in enumerate(rest) if t in stop_ids), len(rest))
                rest = rest[:cut]
            out.append(rest[:max_new])
        return Samples(out, [[-0.1] * len(o) for o in out], [o[-1] == 0 for o in out])


def test_revise_starts_afresh_once_the_scorer_trusts_the_answer():
    task = ChainArithmetic(ChainArithmeticConfig(n_terms=3, n_demos=8, n_test=8), split="test")
    probs = task.eval_problems(2)
    # trusted (>= 0.95) everywhere; longer prefixes a little less, so a rewrite keeps all but the last step
    trusted = lambda problems, texts: [0.999 - 1e-4 * len(t) for t in texts]  # noqa: E731
    later = {}
    for conf in (0.95, None):
        pol = ScriptedPolicy()
        res = revise(pol, task, probs, trusted, rounds=2, confident=conf)
        assert all(e.info["rounds"] == 2 for e in res.episodes)
        later[conf] = [p for call in pol.calls[1:] for p in call]
    bare = [pol.encode_prompt(p.prompt) for p in probs]
    assert all(p in bare for p in later[0.95])  # trusted: every later attempt is a fresh sample
    assert not any(p in bare for p in later[None])  # without the rule: rewrite after the kept steps
