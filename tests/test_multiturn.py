"""Multi-turn episodes and SCoRe: per-turn rewards land on their turn's tokens, environment tokens get
no gradient, Stage I's strong KL touches only attempt 1, the self-correction metrics, and a smoke run
of every SCoRe recipe (SCoRe, STaR, Pair-SFT, naive multi-turn RL)."""

from pathlib import Path

import pytest
import torch

from warmstart.episode import Episode, collate
from warmstart.learn.grpo import policy_gradient_loss
from warmstart.learn.multi_turn import (
    MultiTurnConfig,
    MultiTurnPhase,
    per_turn_to_tokens,
    shape_turn_rewards,
    turn_returns,
)
from warmstart.rollout import Sampling, rollout
from warmstart.tasks.base import Problem, TurnResult
from warmstart.tasks.self_correct import (
    SelfCorrectArithmetic,
    SelfCorrectConfig,
    budget_tokens,
    continuation,
    partial_attempt,
    self_correction_metrics,
    worked_solution,
)


def two_turn_episode(r1: float, r2: float, group: int = 0, p: int = 2, n1: int = 3, n_env: int = 2, n2: int = 4) -> Episode:
    """prompt (p tokens) | attempt 1 (n1) | environment (n_env) | attempt 2 (n2), with turn rewards."""
    e = Episode(prompt="x", prompt_ids=list(range(10, 10 + p)), group=group)
    e.add_turn([20 + i for i in range(n1)], [-1.0] * n1, "a")
    e.add_env([30 + i for i in range(n_env)])
    e.add_turn([40 + i for i in range(n2)], [-1.0] * n2, "b")
    e.turn_rewards = [{"correct": r1}, {"correct": r2}]
    e.info["episode_reward"] = 0.0
    return e


def bare_phase(**kw) -> MultiTurnPhase:
    """A MultiTurnPhase with only its config (enough for token_advantages)."""
    ph = MultiTurnPhase.__new__(MultiTurnPhase)
    ph.cfg = MultiTurnConfig(max_turns=2, **kw)
    return ph


# ----------------------------------------------------------------------------------- reward placement


def test_shaping_bonus_and_returns_by_hand():
    raw = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    shaped = shape_turn_rewards(raw, [1.0, 1.0], alpha=10.0)
    assert shaped.tolist() == [[0.0, 11.0], [1.0, -10.0], [1.0, 1.0]]
    assert shape_turn_rewards(raw, [0.0, 1.0]).tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    G = turn_returns(torch.tensor([[1.0, 2.0]]), gamma=0.5)
    assert G.tolist() == [[2.0, 2.0]]  # G_1 = 1 + 0.5 * 2
    assert turn_returns(torch.tensor([[1.0, 2.0]]), gamma=0.0).tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_turn_rewards_land_on_their_turn_tokens(gamma):
    # group of two: episode 0 improves (0 -> 1), episode 1 worsens (1 -> 0)
    eps = [two_turn_episode(0.0, 1.0), two_turn_episode(1.0, 0.0)]
    batch = collate(eps, pad_id=0, pad_to_multiple=1)
    adv, kl = bare_phase(turn_weights=[1.0, 1.0], gamma=gamma, beta=0.0).token_advantages(eps, batch)
    p, n1, n_env, n2 = 2, 3, 2, 4
    t1 = slice(p - 1, p - 1 + n1)  # target positions of attempt-1 tokens
    env = slice(p - 1 + n1, p - 1 + n1 + n_env)
    t2 = slice(p - 1 + n1 + n_env, p - 1 + n1 + n_env + n2)
    # REINFORCE, group-mean baseline, no scaling: turn returns minus the group mean
    if gamma == 0:
        exp1, exp2 = (-0.5, 0.5), (0.5, -0.5)
    else:  # G_1 = r1 + r2 = 1 for both episodes: no signal on attempt 1
        exp1, exp2 = (0.0, 0.0), (0.5, -0.5)
    for b in range(2):
        assert torch.allclose(adv[b, t1], torch.full((n1,), exp1[b]))
        assert torch.allclose(adv[b, t2], torch.full((n2,), exp2[b]))
        assert torch.all(adv[b, env] == 0)
        assert adv[b, : p - 1].abs().sum() == 0  # prompt
    assert torch.equal(batch.action_mask[0, env], torch.zeros(n_env, dtype=torch.bool))


def test_stage1_strong_kl_only_on_attempt_one():
    eps = [two_turn_episode(0.0, 1.0), two_turn_episode(0.0, 0.0)]
    batch = collate(eps, pad_id=0, pad_to_multiple=1)
    adv, kl = bare_phase(turn_weights=[0.0, 1.0], beta=0.01, turn_beta=[0.1, 0.0]).token_advantages(eps, batch)
    ti = batch.turn_index
    assert torch.allclose(kl[ti == 0], torch.tensor(0.11))
    assert torch.allclose(kl[ti == 1], torch.tensor(0.01))
    assert torch.all(kl[ti < 0] == 0)
    # Stage I: attempt-1 reward weight 0, gamma 0 -> attempt 1 gets no reward signal, only KL
    assert torch.all(adv[ti == 0] == 0) and adv[ti == 1].abs().sum() > 0


# ------------------------------------------------------------------------------------------ gradients


class _Spy:
    """Wraps a policy and keeps the (B, T-1) log-prob tensor so tests can read its gradient."""

    def __init__(self, policy):
        self.policy, self.lp = policy, None

    def forward_logprobs(self, *a, **k):
        lp, ent = self.policy.forward_logprobs(*a, **k)
        lp.retain_grad()
        self.lp = lp
        return lp, ent


def test_environment_tokens_get_no_gradient_and_stage1_kl_is_attempt_one_only(tiny_policy_factory):
    policy = tiny_policy_factory(seed=0)
    ref = tiny_policy_factory(seed=1)  # a different model, so the KL is not zero
    eps = [two_turn_episode(0.0, 1.0), two_turn_episode(1.0, 0.0)]
    batch = collate(eps, pad_id=policy.pad_id, pad_to_multiple=1)
    with torch.no_grad():
        batch.old_logprobs = policy.forward_logprobs(batch.input_ids, batch.attention_mask)
        ref_lp = ref.forward_logprobs(batch.input_ids, batch.attention_mask)
    ti = batch.turn_index
    cfg = MultiTurnConfig(max_turns=2, beta=0.0, turn_beta=[0.1, 0.0], eps_low=float("inf"), eps_high=float("inf"))

    # policy-gradient term: gradient on action tokens only, none on environment / prompt / padding
    adv, _ = bare_phase(turn_weights=[1.0, 1.0]).token_advantages(eps, batch)
    spy = _Spy(policy)
    policy_gradient_loss(spy, batch, adv, cfg)["loss"].backward()
    g = spy.lp.grad
    assert torch.all(g[ti < 0] == 0)
    assert torch.all(g[ti >= 0] != 0)

    # Stage I's KL alone (zero advantages): gradient only on attempt-1 tokens
    _, kl = bare_phase(turn_weights=[0.0, 1.0], beta=0.0, turn_beta=[0.1, 0.0]).token_advantages(eps, batch)
    spy = _Spy(policy)
    terms = policy_gradient_loss(spy, batch, torch.zeros_like(adv), cfg, kl, ref_lp)
    assert terms["loss_kl"] > 0
    terms["loss"].backward()
    g = spy.lp.grad
    assert torch.all(g[ti == 0] != 0)
    assert torch.all(g[ti != 0] == 0)


def test_shared_reference_is_the_first_stage_start_across_phases_and_resume(tiny_policy_factory, tmp_path):
    """reference: shared -> Stage II's KL reference is the policy at the start of Stage I (the base),
    not the policy Stage II starts from; a resumed run (fresh extras) gets the same model from disk."""
    from types import SimpleNamespace

    policy = tiny_policy_factory(seed=0)
    base = {k: v.clone() for k, v in policy.model.state_dict().items()}

    from warmstart.artifacts import Artifacts

    def phase(ctx, **kw):
        ph = MultiTurnPhase.__new__(MultiTurnPhase)
        ph.cfg = MultiTurnConfig(max_turns=2, **kw)
        ph.ctx, ph.policy, ph.reference = ctx, policy, None
        return ph

    ctx = SimpleNamespace(artifacts=Artifacts(tmp_path / "artifacts"))
    stage1 = phase(ctx, beta=0.01, turn_beta=[0.1, 0.0], reference="shared")
    stage1.on_start(0)
    with torch.no_grad():  # "training" in Stage I moves the policy
        for p in policy.model.parameters():
            p.add_(0.5)
    stage2 = phase(ctx, beta=0.01, reference="shared")
    stage2.on_start(0)
    assert stage2.reference is stage1.reference
    for k, v in stage2.reference.state_dict().items():
        assert torch.equal(v, base[k])
    assert not any(p.requires_grad for p in stage2.reference.parameters())
    # the default keeps the per-phase reference (the policy at this phase's start)
    per_phase = phase(SimpleNamespace(artifacts=Artifacts()), beta=0.01)
    per_phase.on_start(0)
    assert torch.equal(next(per_phase.reference.parameters()), next(policy.model.parameters()))
    # resume into Stage II from a phase-boundary checkpoint: nothing in memory, the store on disk has the base
    resumed = phase(SimpleNamespace(artifacts=Artifacts(tmp_path / "artifacts")), beta=0.01, reference="shared")
    resumed.on_start(0)
    assert resumed.reference is not stage1.reference
    for k, v in resumed.reference.state_dict().items():
        assert torch.equal(v, base[k])


def test_per_turn_to_tokens_fill():
    v = torch.tensor([[1.0, 2.0]])
    ti = torch.tensor([[-1, 0, 0, -1, 1, -1]])
    assert per_turn_to_tokens(v, ti).tolist() == [[0.0, 1.0, 1.0, 0.0, 2.0, 0.0]]


# ------------------------------------------------------------------------------------- rollout loop


class _EchoTask:
    """A general multi-turn task: ends after turn 1 for problem 'stop', else answers 'ok' up to 3 turns."""

    max_turns = 3
    max_new_tokens = 4

    def respond(self, e, turn):
        if e.prompt == "stop" and turn == 1:
            return TurnResult(rewards={"r": 1.0}, done=True)
        return TurnResult(rewards={"r": float(turn)}, message="ok")


def test_multi_turn_rollout_is_batched_and_masks_environment(tiny_policy_factory, counting_policy):
    policy = counting_policy(tiny_policy_factory(seed=0))
    probs = [Problem("go", "1"), Problem("stop", "1")]
    gen = torch.Generator().manual_seed(0)
    eps, stats = rollout(policy, probs, task=_EchoTask(), samples=2, sampling=Sampling(4, 1.0), generator=gen)
    assert policy.calls == [4, 4, 2]  # one sample call per turn for all active episodes
    env_ids = policy.encode("ok")
    for e in eps:
        e.check()
        K = 3 if e.prompt == "go" else 2
        assert len(e.turns) == K and len(e.turn_rewards) == K
        # between consecutive turns: exactly the environment message, masked out
        for (s0, s1), (n0, _) in zip(e.turns, e.turns[1:]):
            assert e.ids[s1:n0] == env_ids and not any(e.action_mask[s1:n0])
            assert all(e.action_mask[s0:s1])
        assert e.reward == sum(t["r"] for t in e.turn_rewards)
    assert {e.group for e in eps} == {0, 1}


# -------------------------------------------------------------------------------------------- task


def _task(**kw):
    cfg = SelfCorrectConfig(n_terms=3, n_demos=50, n_test=20, **kw)
    return SelfCorrectArithmetic(cfg, split="train")


def test_self_correct_task_demos_and_respond(tiny_policy_factory):
    policy = tiny_policy_factory()
    task = _task(revision_fraction=0.5)
    assert worked_solution("4*7+6=") == "4*7=8;8+6=4;#4"
    demos = task.demo_episodes(policy)
    assert len(demos) == 50
    n_rev = 0
    for e in demos:
        assert len(e.turns) == 2 and task.is_correct(e.turn_texts[0], e.info["answer"])
        assert task.is_correct(e.turn_texts[1], e.info["answer"])
        (a0, a1), (b0, _) = e.turns
        assert policy.decode(e.ids[a1:b0]) == task.instruction and not any(e.action_mask[a1:b0])
        assert e.ids[a1 - 1] == policy.eos_id  # attempt 1 ends with EOS, so sampling stops there
        n_rev += e.turn_texts[1] != e.turn_texts[0]
    assert 0 < n_rev < 50
    e = demos[0]
    r0 = task.respond(e, 0)
    assert r0.message == task.instruction and not r0.done and r0.rewards == {"correct": 1.0}
    assert task.respond(e, 1).done


def test_wrong_first_demos_are_context_and_revisions_end_on_the_right_answer(tiny_policy_factory):
    policy = tiny_policy_factory()
    task = _task(revision_fraction=0.5, worked_fraction=0.0, wrong_first_fraction=0.5)
    demos = task.demo_episodes(policy)
    wrong = [e for e in demos if len(e.turns) == 1]  # attempt 1 went in as environment tokens
    assert 0 < len(wrong) < len(demos)
    for e in wrong:
        (b0, _), = e.turns
        first = policy.decode(e.ids[:b0]).split(task.instruction)[0]
        assert first.startswith("#") and not task.is_correct(first, e.info["answer"])
        assert not any(e.action_mask[:b0])
        if task.step_separator in e.turn_texts[0]:  # a worked revision: right, unlike attempt 1
            assert task.is_correct(e.turn_texts[0], e.info["answer"])
    # the default keeps every first attempt right and trained
    assert all(len(e.turns) == 2 for e in _task(revision_fraction=0.5).demo_episodes(policy))


def test_budget_attempts_by_hand():
    # 4*7+6*3+9= : 4*7=8; 8+6=4; 4*3=2; 2+9=1 -> 1
    assert partial_attempt("4*7+6*3+9=", 2, "5") == "4*7=8;8+6=4;#5"
    assert continuation("4*7+6*3+9=", 2) == "4*3=2;2+9=1;#1"
    assert continuation("4*7+6*3+9=", 0) == worked_solution("4*7+6*3+9=")
    # 3 steps + "#d" + end token + 1 spare = 22; 4 steps and an answer (26) never fit
    assert budget_tokens(3) == 22 and len("1*2=2;" * 3 + "#2") + 1 < 22 < len("1*2=2;" * 4 + "#2")


def test_budget_task_demos_limits_and_config_errors(tiny_policy_factory):
    from warmstart.errors import ConfigError

    policy = tiny_policy_factory()
    task = SelfCorrectArithmetic(SelfCorrectConfig(n_terms=5, budget_steps=2, n_demos=60, n_test=20, revision_fraction=0.5,
                                                   wrong_first_fraction=0.5), split="train")
    assert task.max_new_tokens == [16, 16]  # one limit per attempt, read by the rollout
    assert Sampling(task.max_new_tokens).limit(1) == 16
    n_rev = n_wrong = 0
    for e in task.demo_episodes(policy):
        first = policy.decode(e.ids[: e.turns[-1][0]]).split(task.instruction)[0]
        last = e.turn_texts[-1]
        # attempt 1: the first 2 steps, then an answer (right, or wrong and then no loss); both fit the budget
        assert first.count(";") == 2 and len(policy.encode(first)) + 1 <= 16 and len(policy.encode(last)) + 1 <= 16
        assert first.startswith(e.prompt[:3])
        n_wrong += len(e.turns) == 1
        if last != first:  # a revision: steps 3-4 from attempt 1's last value, ending on the right answer
            n_rev += 1
            assert last == continuation(e.prompt, 2) and task.is_correct(last, e.info["answer"])
            assert last.startswith(first.split(";")[1][-1])
    assert 0 < n_rev < 60 and 0 < n_wrong < 60
    for n_terms, k in [(5, 1), (5, 4), (7, 6)]:  # too short for two attempts / long enough for one
        with pytest.raises(ConfigError, match="budget_steps"):
            SelfCorrectArithmetic(SelfCorrectConfig(n_terms=n_terms, budget_steps=k, n_demos=10, n_test=5))


def test_budget_caps_sampled_attempts(tiny_policy_factory):
    """An untrained policy rarely emits the end token: each attempt stops at its budget."""
    policy = tiny_policy_factory(seed=0)
    task = SelfCorrectArithmetic(SelfCorrectConfig(n_terms=5, budget_steps=2, n_demos=10, n_test=5), split="test")
    eps, _ = rollout(policy, task.eval_problems(5), task=task, sampling=Sampling(task.max_new_tokens, 1.0),
                     generator=torch.Generator().manual_seed(0))
    for e in eps:
        assert len(e.turns) == 2 and all(s1 - s0 <= 16 for s0, s1 in e.turns)
    m = task.turn_metrics(eps)
    assert 0.0 <= m["revised"] <= 1.0


def test_self_correction_metrics_on_hand_made_pairs():
    # (t1, t2): c->c, i->c, i->c, c->i, i->i
    correct = [[True, True], [False, True], [False, True], [True, False], [False, False]]
    m = self_correction_metrics(correct, changed=[False, True, True, True, False])
    assert m["acc@t1"] == pytest.approx(0.4) and m["acc@t2"] == pytest.approx(0.6)
    assert m["delta"] == pytest.approx(0.2)
    assert m["delta_i2c"] == pytest.approx(0.4) and m["delta_c2i"] == pytest.approx(0.2)
    assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"])
    assert m["changed"] == pytest.approx(0.6)


def test_task_turn_metrics_from_texts():
    task = _task()
    p = task.problems[0]
    wrong = str((int(p.answer) + 1) % 10)

    def ep(a, b):
        e = Episode(prompt=p.prompt, prompt_ids=[1], info={"answer": p.answer})
        e.add_turn([5], [0.0], a)
        e.add_env([6])
        e.add_turn([5], [0.0], b)
        return e

    m = task.turn_metrics([ep(f"#{wrong}", f"1+1=2;#{p.answer}"), ep(f"#{p.answer}", f"#{p.answer}"),
                           ep(f"#{p.answer}", f"#{wrong}"), ep(f"#{wrong}", f"#{wrong}")])
    assert (m["acc@t1"], m["acc@t2"], m["delta_i2c"], m["delta_c2i"]) == (0.5, 0.5, 0.25, 0.25)
    assert m["changed"] == 0.5 and m["worked@t2"] == 0.25 and m["accuracy"] == m["acc@t2"]
    assert m["revised"] == 0.5  # attempt 2's text differs from attempt 1's in the first and third


# ----------------------------------------------------------------------------------------- eval


def test_eval_turns_on_a_saved_policy(tiny_policy_factory, tmp_path):
    """The eval command's --turns: two attempts on a multi-turn task; a single-turn task refuses."""
    from warmstart.engine.config import EvalConfig
    from warmstart.engine.eval import evaluate_checkpoint
    from warmstart.errors import ConfigError

    tiny_policy_factory(seed=0).save(tmp_path / "final")
    ev = EvalConfig(n=4, batch_size=4)
    m, _ = evaluate_checkpoint(tmp_path / "final", "self_correct_arithmetic", ev, ["n_terms=3", "n_test=4"], turns=2)
    assert {"acc@t1", "acc@t2", "delta_i2c", "delta_c2i"} <= set(m) and m["n"] == 4
    with pytest.raises(ConfigError, match="single-turn"):
        evaluate_checkpoint(tmp_path / "final", "chain_arithmetic", ev, ["n_test=4"], turns=2)
