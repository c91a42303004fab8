"""ProMed: Shapley values (by hand, efficiency, symmetry, null player, Monte-Carlo vs exact), the
softmax weights and SIG (nothing for a repeat), the diagnosis world's exact v(S), the patient (answers
from the record, never names a disease), the Bayes ceilings and the dialogue tree under MCTS."""

import math

import numpy as np
import pytest

from warmstart.functional import (
    exact_shapley,
    monte_carlo_shapley,
    popcount,
    shapley_information_gain,
    shapley_weights,
)
from warmstart.tasks.promed import (
    DISEASE_NAMES,
    REPLY_MALFORMED,
    REPLY_REFUSE,
    REPLY_UNKNOWN,
    Case,
    DiagnosisWorld,
    DialogueTreeEnv,
    Patient,
    TreeState,
    at_once_answer,
    greedy_information_gain,
    oracle_answer,
    parse_turn,
    render_dialogue,
)


def table(fn, n):
    return np.array([fn(frozenset(i for i in range(n) if m >> i & 1)) for m in range(1 << n)], dtype=float)


# ------------------------------------------------------------------------------------ Shapley math


def test_exact_shapley_by_hand():
    # v({})=0, v({0})=1, v({1})=2, v({0,1})=4: phi_0 = (1 + (4-2))/2, phi_1 = (2 + (4-1))/2
    phi = exact_shapley(np.array([0.0, 1.0, 2.0, 4.0]))
    assert phi.tolist() == [1.5, 2.5]
    # three players, v = |S|^2: symmetric, each gets v(all)/3
    assert np.allclose(exact_shapley(table(lambda s: len(s) ** 2, 3)), [3.0, 3.0, 3.0])
    assert popcount(np.array([0, 1, 5, 255])).tolist() == [0, 1, 2, 8]


def test_shapley_symmetry_and_null_player_on_a_game():
    # players 0 and 1 interchangeable, player 3 never changes the value
    v = lambda s: 2.0 * ((0 in s) + (1 in s)) + 3.0 * (2 in s) + 1.5 * ((0 in s) and (2 in s)) + 1.5 * ((1 in s) and (2 in s))
    phi = exact_shapley(table(v, 4))
    assert phi[0] == pytest.approx(phi[1])
    assert phi[3] == pytest.approx(0.0)
    assert phi.sum() == pytest.approx(v({0, 1, 2, 3}) - v(set()))
    assert phi[0] == pytest.approx(2.0 + 0.75)  # own 2 + half of its pair bonus with player 2


@pytest.mark.parametrize("preset", ["small", "larger"])
def test_efficiency_on_world_cases(preset):
    world = DiagnosisWorld(preset, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        case = world.sample_case(rng)
        if len(case.facts) > 16:
            continue
        vt = world.value_table(case)
        phi = exact_shapley(vt)
        assert phi.sum() == pytest.approx(vt[-1] - vt[0], abs=1e-9)


def test_null_fact_gets_zero_and_twin_facts_get_equal_values():
    world = DiagnosisWorld("small", seed=1)
    world.lik[:, 0] = 0.4  # fact 0 says nothing about the disease
    world.lik[:, 2] = world.lik[:, 1]  # facts 1 and 2 are interchangeable
    world.log_lik = np.stack([np.log1p(-world.lik), np.log(world.lik)])
    case = Case(disease=0, options=(0, 1, 2, 3), facts=((0, 1), (1, 1), (2, 1), (5, 0)), visible=(0, 3))
    phi = exact_shapley(world.value_table(case))
    assert phi[0] == pytest.approx(0.0, abs=1e-12)
    assert phi[1] == pytest.approx(phi[2])


def test_monte_carlo_matches_exact():
    world = DiagnosisWorld("small", seed=0)
    rng = np.random.default_rng(1)
    case = world.sample_case(rng)
    exact = exact_shapley(world.value_table(case))
    est, k = monte_carlo_shapley(lambda m: world.value_of_masks(case, m), len(case.facts), np.random.default_rng(2),
                                 min_permutations=2000, max_permutations=2000)
    assert k == 2000
    assert np.max(np.abs(est - exact)) < 0.05
    # the paper's setting stops between 3 and 50 permutations, and every estimate is a full permutation's
    est, k = monte_carlo_shapley(lambda m: world.value_of_masks(case, m), len(case.facts), np.random.default_rng(2))
    assert 3 <= k <= 50
    vt = world.value_table(case)
    assert est.sum() == pytest.approx(vt[-1] - vt[0])  # every permutation is efficient, so is their mean


def test_weights_and_sig_by_hand():
    w = shapley_weights(np.array([0.0, 2 * math.log(3)]), temperature=2.0)  # exp(0), exp(ln 3)
    assert w.tolist() == pytest.approx([0.25, 0.75])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    assert shapley_information_gain(w, [2], known=[0]) == pytest.approx(0.3)
    assert shapley_information_gain(w, [2], known=[0, 2]) == 0.0  # asked again: nothing new
    assert shapley_information_gain(w, [2, 3, 3], known=[3]) == pytest.approx(0.3)
    assert shapley_information_gain(w, [], known=[]) == 0.0


# ------------------------------------------------------------------------------------ world, patient


def test_value_table_is_the_posterior_of_the_right_answer():
    world = DiagnosisWorld("larger", seed=2)
    case = world.sample_case(np.random.default_rng(5))
    mask = 0b1011
    known = world.known_facts(case, [p for p in range(len(case.facts)) if mask >> p & 1])
    lp = world.log_posterior(known, case.options)
    assert world.value_of_masks(case, np.array([mask]))[0] == pytest.approx(lp[case.options.index(case.disease)])
    assert np.exp(lp).sum() == pytest.approx(1.0)
    assert case.disease in case.options and len(case.options) == world.preset.n_options
    assert len(case.visible) == len(case.facts) // 2


def test_patient_answers_from_the_record_only():
    world = DiagnosisWorld("larger", seed=0)  # 'small' records every fact
    rng = np.random.default_rng(0)
    case = next(c for c in (world.sample_case(rng) for _ in range(50)) if len(c.facts) < world.preset.n_facts)
    patient = Patient(world, case)
    for p, (j, v) in enumerate(case.facts):
        rep = patient.reply(f"ask {world.fact_names[j]}")
        assert rep.status == "answered" and rep.position == p
        assert rep.text == (": yes\n" if v else ": no\n")
    missing = next(j for j in range(world.preset.n_facts) if case.position(j) is None)
    assert patient.reply(f"ask {world.fact_names[missing]}").text == REPLY_UNKNOWN
    assert patient.reply("ask banana").text == REPLY_UNKNOWN
    for bad in ["", "ask", "ask fever cough", "fever?", "ASK fever", "answer"]:
        rep = patient.reply(bad)
        assert rep.status == "malformed" and rep.text == REPLY_MALFORMED and rep.position is None
    assert parse_turn(" answer flu ").kind == "answer"


def test_patient_never_leaks_the_diagnosis():
    world = DiagnosisWorld("larger", seed=4)
    rng = np.random.default_rng(1)
    words = list(world.fact_names) + list(DISEASE_NAMES) + ["diagnosis", "disease", "illness", "answer", "what", "tell"]
    for _ in range(40):
        case = world.sample_case(rng)
        patient = Patient(world, case)
        questions = [f"ask {w}" for w in words] + [f"answer {w}" for w in words] + [
            "what do i have", "ask what is my diagnosis", "tell me the answer", "ask diagnosis please"]
        for q in questions:
            rep = patient.reply(q)
            assert not any(name in rep.text for name in DISEASE_NAMES), (q, rep.text)
        for name in DISEASE_NAMES:
            assert patient.reply(f"ask {name}").text == REPLY_REFUSE


def test_ceilings_order():
    world = DiagnosisWorld("small", seed=0)
    rng = np.random.default_rng(7)
    cases = [world.sample_case(rng) for _ in range(300)]
    oracle = np.mean([oracle_answer(world, c) == c.disease for c in cases])
    once = np.mean([at_once_answer(world, c) == c.disease for c in cases])
    greedy = [greedy_information_gain(world, c) for c in cases]
    acc = np.mean([g.answer == c.disease for g, c in zip(greedy, cases)])
    # measured on this world: at once ~0.6, greedy ~0.78, oracle ~0.79
    assert oracle > once + 0.08 and acc > once + 0.08
    assert all(len(g.questions) <= 10 for g in greedy)
    assert 0 < np.mean([len(g.questions) for g in greedy]) < 10


def test_render_dialogue():
    world = DiagnosisWorld("small", seed=0)
    case = Case(disease=1, options=(0, 1, 2, 3), facts=((0, 1), (3, 0), (5, 1)), visible=(0,))
    turns = render_dialogue(world, case, [3, 7], 1)
    assert turns == [(f"ask {world.fact_names[3]}", ": no\n"), (f"ask {world.fact_names[7]}", REPLY_UNKNOWN),
                     (f"answer {world.disease_names[1]}", None)]
    assert world.prompt(case) == f"facts: {world.fact_names[0]}+\noptions: flu gout lyme mumps\n"


# ------------------------------------------------------------------------------------ dialogue tree


def test_tree_values_by_hand_and_mcts_finds_an_answer():
    from warmstart.search.mcts import MCTS, most_visited_path

    world = DiagnosisWorld("small", seed=0)
    case = Case(disease=1, options=(0, 1, 2, 3), facts=((0, 1), (3, 0), (5, 1), (6, 0)), visible=(0, 1))
    w = np.array([0.1, 0.2, 0.3, 0.4])
    env = DialogueTreeEnv(world, [case], [w])
    assert env.evaluate([TreeState(0)]) == pytest.approx([0.3])
    assert env.evaluate([TreeState(0, (5,))]) == pytest.approx([0.9 * 0.6])  # revealed position 2
    assert env.evaluate([TreeState(0, (5, 9), 1)]) == pytest.approx([0.9**3 * (0.6 + 2.0)])
    assert env.evaluate([TreeState(0, (9,), 0)]) == pytest.approx([0.9**2 * 0.3])  # unknown fact, wrong answer
    kids = env.expand([TreeState(0)])[0]
    assert len(kids) == 8 and kids[0][0][0] == "answer"
    assert all(a[0] == "ask" and a[1] not in (0, 3) for a, _, _ in kids[1:])
    full = env.expand([TreeState(0, tuple(range(1, 11)))])[0]
    assert [a[0] for a, _, _ in full] == ["answer"]  # out of questions

    rng = np.random.default_rng(3)
    cases = [world.sample_case(rng) for _ in range(20)]
    weights = [shapley_weights(exact_shapley(world.value_table(c))) for c in cases]
    env = DialogueTreeEnv(world, cases, weights)
    roots = MCTS(env, simulations=48, c_puct=2.2, leaves_per_tree=1, max_depth=11).search([TreeState(i) for i in range(20)])
    right, answered = 0, 0
    for root, c in zip(roots, cases):
        last = most_visited_path(root)[-1].state
        answered += last.answer is not None
        questions, answer = env.finish(last)
        assert list(questions) == list(last.asked) and answer in c.options
        right += answer == c.disease
    assert answered >= 10  # most trees' best paths end in an answer within 48 simulations
    # the search knows the truth through its reward: its dialogues end right more often than answering at once
    assert right > sum(at_once_answer(world, c) == c.disease for c in cases)


# ------------------------------------------------------------------------------ task and rewards


def _dialogue(task, problem, turns):
    """An episode of ``problem`` whose doctor turns are ``turns``, answered by ``task.respond``."""
    from warmstart.episode import Episode

    e = Episode(prompt=problem.prompt, prompt_ids=[1, 2], info={"answer": problem.answer, **problem.info})
    for k, text in enumerate(turns):
        e.add_turn([5] * (k + 1), [0.0] * (k + 1), text)  # turn k has k+1 tokens
        res = task.respond(e, k)
        e.turn_rewards[k] = dict(res.rewards)
        if res.done:
            break
        e.add_env([9, 9])
    return e, res


def test_respond_sig_only_for_new_facts_and_sig_right_after_a_right_answer():
    from warmstart.tasks.promed import ProMedConfig, ProMedTask

    task = ProMedTask(ProMedConfig(n_test=20), split="test")
    prob = task.eval_problems(1)[0]
    case, w, world = prob.info["case"], prob.info["weights"], task.world
    hidden = [case.facts[p][0] for p in case.hidden]
    seen = case.facts[case.visible[0]][0]
    q1, q2 = world.ask_text(hidden[0]), world.ask_text(hidden[1])
    turns = [q1, q1, world.ask_text(seen), "ask zz", "hello", q2, world.answer_text(case.disease)]
    e, res = _dialogue(task, prob, turns)
    sig = [t["sig"] for t in e.turn_rewards]
    p1, p2 = case.position(hidden[0]), case.position(hidden[1])
    assert sig == pytest.approx([w[p1], 0.0, 0.0, 0.0, 0.0, w[p2], 0.0])  # repeat, visible, unknown, malformed: 0
    assert [t["format"] for t in e.turn_rewards] == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert [t["sig_right"] for t in e.turn_rewards] == pytest.approx(sig)  # right answer: SIG * 1
    assert e.turn_rewards[-1]["correct"] == 1.0 and res.done
    m = task.dialogue_metrics([e])
    assert m["questions"] == 6 and m["useless_share"] == pytest.approx(4 / 6) and m["accuracy"] == 1.0
    assert m["coverage"] == pytest.approx(sum(w[p] for p in (*case.visible, p1, p2)))
    # a wrong answer: no SIG * right; an 11th question: the dialogue ends unanswered
    wrong = next(k for k in case.options if k != case.disease)
    e, _ = _dialogue(task, prob, [q1, world.answer_text(wrong)])
    assert e.turn_rewards[0]["sig_right"] == 0.0 and e.turn_rewards[1]["correct"] == 0.0
    e, res = _dialogue(task, prob, [q1] * 11)
    assert res.done and len(e.turns) == 11 and e.turn_rewards[-1]["correct"] == 0.0
    assert e.turn_rewards[-1]["format"] == 0.0


def test_turn_rewards_land_on_their_turn_tokens():
    from warmstart.episode import Episode, collate
    from warmstart.learn.multi_turn import per_turn_to_tokens
    from warmstart.learn.promed import ProMedGRPOConfig, final_turn_tokens, token_mean_advantages, weighted_turn_rewards

    def ep(terms, group):
        e = Episode(prompt="x", prompt_ids=[1, 2], group=group)
        for k, t in enumerate(terms):
            e.add_turn([5, 6], [0.0, 0.0], "t")
            e.turn_rewards[k] = t
            e.add_env([9])
        return e

    q = {"sig": 0.5, "sig_right": 0.5, "correct": 0.0, "format": 1.0}  # 2*0.5 + 1*0.5 + 1 = 2.5
    a_right = {"sig": 0.0, "sig_right": 0.0, "correct": 1.0, "format": 1.0}  # 3 + 1 = 4
    a_wrong = {"sig": 0.0, "sig_right": 0.0, "correct": 0.0, "format": 0.0}  # 0
    eps = [ep([q, a_right], 0), ep([a_wrong], 0)]
    cfg = ProMedGRPOConfig()
    R = weighted_turn_rewards(eps, cfg, 2)
    assert R.tolist() == [[2.5, 4.0], [0.0, 0.0]]
    batch = collate(eps, pad_id=0, pad_to_multiple=1)
    r_tok = per_turn_to_tokens(R, batch.turn_index)
    adv = token_mean_advantages(r_tok, batch.action_mask, batch.groups)
    # group token mean: (2*2.5 + 2*4 + 2*0) / 6 = 13/6; turn 1 tokens sit at targets 1-2, turn 2 at 4-5
    mean = 13 / 6
    assert adv[0, 1:3].tolist() == pytest.approx([2.5 - mean] * 2)
    assert adv[0, 4:6].tolist() == pytest.approx([4.0 - mean] * 2)
    assert adv[1, 1:3].tolist() == pytest.approx([-mean] * 2)
    assert adv[0, 3] == 0 and adv[0, 0] == 0  # the patient's token and the prompt get nothing
    assert float((adv * batch.action_mask).sum()) == pytest.approx(0.0, abs=1e-6)  # centred over the group's tokens
    # per kind: questions against questions (only episode 0 asks: advantage 0), answers against answers
    kinds = final_turn_tokens(eps, batch.turn_index)
    assert kinds[0, 1:3].tolist() == [0, 0] and kinds[0, 4:6].tolist() == [1, 1] and kinds[1, 1:3].tolist() == [1, 1]
    adv = token_mean_advantages(r_tok, batch.action_mask, batch.groups, kinds)
    assert adv[0, 1:3].tolist() == pytest.approx([0.0, 0.0])
    assert adv[0, 4:6].tolist() == pytest.approx([2.0, 2.0]) and adv[1, 1:3].tolist() == pytest.approx([-2.0, -2.0])


# ------------------------------------------------------------------------------------ it learns


@pytest.mark.slow
def test_sig_reward_rises_on_a_tiny_world(tmp_path):
    """From a warm start that asks 0-4 random questions, GRPO with the SIG reward alone (no answer
    reward) learns to ask more facts it has not seen: the mean SIG collected per dialogue rises."""
    import json

    import torch

    from warmstart.engine.config import validate_recipe
    from warmstart.engine.run import run_recipe

    torch.set_num_threads(1)
    raw = {
        "name": "promed-learns", "seed": 0,
        "task": {"kind": "promed", "preset": "small", "n_test": 16, "max_questions": 3},
        "policy": {"kind": "lm", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "max_position": 640, "threads": 1},
        "phases": [
            {"kind": "promed_sft", "name": "sft", "source": "random", "n_demos": 400, "steps": 150, "batch_size": 32,
             "lr": 5e-3, "warmup": 10},
            {"kind": "promed_grpo", "name": "grpo", "steps": 12, "prompts_per_step": 8, "group_size": 4, "lr": 3e-3,
             "temperature": 1.0, "alpha": 1.0, "beta_sig": 0.0, "gamma": 0.0, "format_weight": 0.0, "beta": 0.0},
        ],
        "eval": {"n": 16, "batch_size": 16},
        "checkpoint": {"every": 0},
    }
    run_recipe(validate_recipe(raw), raw, run_dir=tmp_path / "run", quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r.get("phase") == "grpo" and "reward" in r]
    reward = [r["reward"] for r in grpo]
    print("SIG per dialogue", [round(r, 3) for r in reward])
    # measured: 0.056 over the first 3 steps -> 0.082 over the last 6, asking 1.7 -> 3 questions
    first, last = sum(reward[:3]) / 3, sum(reward[-6:]) / 6
    assert last > first + 0.015, (first, last)
    assert grpo[-1]["questions"] > grpo[0]["questions"] + 0.5
