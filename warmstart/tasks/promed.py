"""ProMed's diagnosis world: a seeded Bayes net of diseases and facts, cases, a patient simulator,
the exact value of a fact set, and the Bayes-optimal ceilings.

The world is a naive Bayes net: a prior over ``n_diseases`` diseases and, for every binary fact
(symptom, history, test result) ``j``, ``P(fact j present | disease k)``. Each disease has a few
*signature* facts that it makes likely; every other fact is background noise. A **case** draws a
disease, the values of all facts, and which facts its record holds (``p_recorded`` each; a fact not
in the record is one the patient cannot speak to). The doctor sees half of the recorded facts and
``n_options`` candidate diagnoses (the right one among them); the other half is for asking.

One dialogue, as text (``|`` separates the doctor's turns, which end with EOS, from the patient's)::

    prompt   facts: b+ e- f+ k-
             options: flu gout lyme mumps
    turn     ask c            | : yes
    turn     ask h            | : unknown          (not in the record)
    turn     answer lyme                           (ends the episode)

The patient answers ``ask FACT`` from the record (``yes``/``no``), says ``unknown`` for a fact the
record does not hold (or a word it does not know), refuses anything about the diagnosis, and
replies with the grammar to anything else; no reply ever names a disease.

**Value of a fact set.** ``v(S) = log P(right diagnosis | facts in S)`` over the case's options,
computed exactly from the net (the paper scores the answer's log-probability under a reference LM;
here the world is known, so the value is exact). :meth:`DiagnosisWorld.value_table` gives it for
all ``2**m`` subsets of a case's ``m`` recorded facts at once.

**Ceilings.** :func:`oracle_answer` sees every recorded fact; :func:`greedy_information_gain`
asks, one at a time, the fact with the largest expected entropy reduction of the posterior under
the true model and stops when no question is worth ``min_gain`` nats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import ConfigError
from warmstart.functional import exact_shapley, monte_carlo_shapley, shapley_information_gain, shapley_weights
from warmstart.registry import TASKS
from warmstart.tasks.base import Problem, TurnResult

# Facts are named by single letters: a character-level model reads each in one token, which makes
# the dialogue text ~2x shorter and, measured, ~3x cheaper per SFT step than symptom words.
FACT_NAMES = tuple("abcdefghijklmnopqrstuvwx")
DISEASE_NAMES = ("flu", "gout", "lyme", "mumps", "strep", "asthma", "anemia", "ulcer", "angina", "sepsis",
                 "typhus", "zika")
# words that ask for the diagnosis itself: the patient refuses them like a disease name
DIAGNOSIS_WORDS = ("diagnosis", "disease", "illness", "answer", "option", "options")

REPLY_YES = ": yes\n"
REPLY_NO = ": no\n"
REPLY_UNKNOWN = ": unknown\n"
REPLY_REFUSE = ": I cannot tell you that\n"
REPLY_MALFORMED = ": ask FACT or answer DISEASE\n"

_TURN = re.compile(r"^\s*(ask|answer)\s+([a-z]+)\s*$")


@dataclass(frozen=True)
class WorldPreset:
    """Sizes and likelihood ranges of a generated world."""

    n_diseases: int
    n_facts: int
    n_options: int
    signature_facts: int  # facts per disease that it makes likely
    p_signature: tuple[float, float]  # P(fact | disease) range for a signature fact
    p_background: tuple[float, float]  # ... and for every other fact
    p_recorded: float  # chance that a case's record holds a given fact


PRESETS: dict[str, WorldPreset] = {
    # 4 diseases, 12 facts, 2 signature facts each: exact Shapley values for every case, quick to
    # learn; every fact is in the record (the patient says "unknown" only to words that are not facts);
    # Bayes-optimal accuracy ~0.65 from the visible half, ~0.8 from the whole record
    "small": WorldPreset(4, 12, 4, 2, (0.7, 0.95), (0.05, 0.25), 1.0),
    # 8 diseases (4 offered per case), 24 facts, a sparser record: more to ask, more to ask in vain
    "larger": WorldPreset(8, 24, 4, 3, (0.7, 0.95), (0.05, 0.3), 0.7),
}


@dataclass(frozen=True)
class Case:
    """One patient: the disease, the options offered, the recorded facts and which are visible.

    ``facts`` holds (fact index, value) for every recorded fact, in index order; these are the
    players of the Shapley game (position ``p`` in ``facts`` is bit ``p`` of a fact-set mask).
    ``visible`` lists the positions in ``facts`` that the doctor sees from the start.
    """

    disease: int
    options: tuple[int, ...]
    facts: tuple[tuple[int, int], ...]
    visible: tuple[int, ...]

    @property
    def record(self) -> dict[int, int]:
        return dict(self.facts)

    def position(self, fact: int) -> int | None:
        for p, (j, _) in enumerate(self.facts):
            if j == fact:
                return p
        return None

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(p for p in range(len(self.facts)) if p not in self.visible)


class DiagnosisWorld:
    """A seeded naive Bayes net over diseases and binary facts (see the module docstring)."""

    def __init__(self, preset: str | WorldPreset = "small", seed: int = 0):
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ConfigError(f"unknown ProMed world preset {preset!r}; known presets: {', '.join(PRESETS)}.")
            preset = PRESETS[preset]
        p = preset
        if p.n_facts > len(FACT_NAMES) or p.n_diseases > len(DISEASE_NAMES):
            raise ConfigError(f"a ProMed world has at most {len(FACT_NAMES)} facts and {len(DISEASE_NAMES)} diseases; "
                              f"got {p.n_facts} and {p.n_diseases}.")
        if not 2 <= p.n_options <= p.n_diseases:
            raise ConfigError(f"n_options must be between 2 and n_diseases ({p.n_diseases}); got {p.n_options}.")
        self.preset, self.seed = p, seed
        rng = np.random.default_rng(seed)
        self.prior = rng.dirichlet(np.full(p.n_diseases, 8.0))  # (K,) mildly uneven
        lik = rng.uniform(*p.p_background, size=(p.n_diseases, p.n_facts))  # (K, n)
        for k in range(p.n_diseases):
            sig = rng.choice(p.n_facts, size=p.signature_facts, replace=False)
            lik[k, sig] = rng.uniform(*p.p_signature, size=p.signature_facts)
        self.lik = lik
        self.log_prior = np.log(self.prior)
        self.log_lik = np.stack([np.log1p(-lik), np.log(lik)])  # (2, K, n): [value, disease, fact]
        self.fact_names = FACT_NAMES[: p.n_facts]
        self.disease_names = DISEASE_NAMES[: p.n_diseases]
        self.fact_index = {name: j for j, name in enumerate(self.fact_names)}
        self.disease_index = {name: k for k, name in enumerate(self.disease_names)}

    # ------------------------------------------------------------------------------------ cases
    def sample_case(self, rng: np.random.Generator) -> Case:
        """A disease from the prior, fact values from its likelihoods, a record (at least two
        facts), half of it visible, and ``n_options`` options holding the right one."""
        p = self.preset
        d = int(rng.choice(p.n_diseases, p=self.prior))
        values = (rng.random(p.n_facts) < self.lik[d]).astype(int)
        rec = np.flatnonzero(rng.random(p.n_facts) < p.p_recorded)
        if len(rec) < 2:
            rec = np.sort(rng.choice(p.n_facts, size=2, replace=False))
        facts = tuple((int(j), int(values[j])) for j in rec)
        visible = tuple(sorted(int(x) for x in rng.choice(len(facts), size=len(facts) // 2, replace=False)))
        others = [k for k in range(p.n_diseases) if k != d]
        options = tuple(sorted([d, *(int(k) for k in rng.choice(others, size=p.n_options - 1, replace=False))]))
        return Case(d, options, facts, visible)

    # ------------------------------------------------------------------------------ posteriors
    def log_posterior(self, known: dict[int, int], options: tuple[int, ...]) -> np.ndarray:
        """(len(options),) log P(disease | known facts), renormalised over the options."""
        opts = np.asarray(options)
        s = self.log_prior[opts].copy()
        for j, v in known.items():
            s += self.log_lik[v, opts, j]
        return s - np.logaddexp.reduce(s)

    def map_answer(self, known: dict[int, int], options: tuple[int, ...]) -> int:
        """The most probable option given the known facts (the Bayes-optimal answer)."""
        return int(options[int(np.argmax(self.log_posterior(known, options)))])

    def known_facts(self, case: Case, positions) -> dict[int, int]:
        """{fact index: value} of the case facts at ``positions``."""
        return {case.facts[p][0]: case.facts[p][1] for p in positions}

    # ------------------------------------------------------------------------------ v(S)
    def value_of_masks(self, case: Case, masks: np.ndarray) -> np.ndarray:
        """v(S) = log P(right diagnosis | facts in S) for each bit mask over ``case.facts``."""
        opts = np.asarray(case.options)
        right = case.options.index(case.disease)
        masks = np.asarray(masks, dtype=np.int64)
        m = len(case.facts)
        bits = ((masks[:, None] >> np.arange(m)) & 1).astype(np.float64)  # (M, m)
        ll = np.stack([self.log_lik[v, opts, j] for j, v in case.facts]) if m else np.zeros((0, len(opts)))  # (m, O)
        s = self.log_prior[opts][None, :] + bits @ ll  # (M, O)
        return s[:, right] - np.logaddexp.reduce(s, axis=1)

    def value_table(self, case: Case) -> np.ndarray:
        """(2**m,) v(S) for every subset of the case's ``m`` recorded facts."""
        m = len(case.facts)
        if m > 20:
            raise ValueError(f"value_table enumerates 2**{m} subsets; use Monte-Carlo Shapley for more than 20 facts")
        return self.value_of_masks(case, np.arange(1 << m))

    # -------------------------------------------------------------------------- information gain
    def expected_information_gain(self, known: dict[int, int], options: tuple[int, ...],
                                  candidates: list[int]) -> np.ndarray:
        """(len(candidates),) expected entropy reduction (nats) of the posterior over the options
        from learning each candidate fact, under the true model (as if it is in the record)."""
        lp = self.log_posterior(known, options)  # (O,)
        post = np.exp(lp)
        h0 = -np.sum(post * lp)
        opts, cands = np.asarray(options), np.asarray(candidates, dtype=np.int64)
        q1 = post @ self.lik[opts][:, cands]  # (C,) P(fact present | known)
        h_after = np.zeros(len(cands))
        for v, qv in ((1, q1), (0, 1.0 - q1)):
            s = lp[:, None] + self.log_lik[v][opts][:, cands]  # (O, C) unnormalised posterior after the reply
            s = s - np.logaddexp.reduce(s, axis=0, keepdims=True)
            h_after += qv * -np.sum(np.exp(s) * s, axis=0)
        return h0 - h_after

    # ---------------------------------------------------------------------------------- text
    def prompt(self, case: Case) -> str:
        """What the doctor sees: the visible facts (``name+`` present, ``name-`` absent) and the options."""
        shown = " ".join(f"{self.fact_names[case.facts[p][0]]}{'+' if case.facts[p][1] else '-'}" for p in case.visible)
        opts = " ".join(self.disease_names[k] for k in case.options)
        return f"facts: {shown}\noptions: {opts}\n"

    def ask_text(self, fact: int) -> str:
        return f"ask {self.fact_names[fact]}"

    def answer_text(self, disease: int) -> str:
        return f"answer {self.disease_names[disease]}"


# ---------------------------------------------------------------------------------------- patient


@dataclass
class DoctorTurn:
    """A parsed doctor turn: ``kind`` is ``ask``, ``answer`` or ``malformed``; ``word`` what followed."""

    kind: str
    word: str = ""


def parse_turn(text: str) -> DoctorTurn:
    """``ask WORD`` / ``answer WORD`` (lower-case letters), anything else is malformed."""
    m = _TURN.match(text)
    return DoctorTurn(m.group(1), m.group(2)) if m else DoctorTurn("malformed")


@dataclass
class PatientReply:
    """The patient's reply text and what it revealed: ``status`` is ``answered``, ``unknown``,
    ``refused`` or ``malformed``; ``position`` the case-fact position answered (None otherwise)."""

    text: str
    status: str
    position: int | None = None


class Patient:
    """Answers the doctor's questions from one case's record, and nothing else."""

    def __init__(self, world: DiagnosisWorld, case: Case):
        self.world, self.case = world, case

    def reply(self, question: str | DoctorTurn) -> PatientReply:
        turn = parse_turn(question) if isinstance(question, str) else question
        if turn.kind != "ask":
            return PatientReply(REPLY_MALFORMED, "malformed")
        word = turn.word
        if word in self.world.disease_index or word in DIAGNOSIS_WORDS or word in DISEASE_NAMES:
            return PatientReply(REPLY_REFUSE, "refused")
        j = self.world.fact_index.get(word)
        pos = None if j is None else self.case.position(j)
        if pos is None:
            return PatientReply(REPLY_UNKNOWN, "unknown")
        return PatientReply(REPLY_YES if self.case.facts[pos][1] else REPLY_NO, "answered", pos)


# ------------------------------------------------------------------------------ dialogue bookkeeping


@dataclass
class DialogueState:
    """What a doctor has learned so far in one case: the case-fact positions known (visible or
    revealed), the questions asked, the answer (None until given)."""

    known: set[int]
    asked: list[str] = field(default_factory=list)
    revealed: list[int | None] = field(default_factory=list)  # per question: newly revealed position
    answer: int | None = None

    @classmethod
    def start(cls, case: Case) -> "DialogueState":
        return cls(known=set(case.visible))


# ------------------------------------------------------------------------------------- ceilings


def oracle_answer(world: DiagnosisWorld, case: Case) -> int:
    """The Bayes-optimal answer given every recorded fact (the all-facts oracle)."""
    return world.map_answer(case.record, case.options)


def at_once_answer(world: DiagnosisWorld, case: Case) -> int:
    """The Bayes-optimal answer given the visible facts only (the best any answer-at-once policy can do)."""
    return world.map_answer(world.known_facts(case, case.visible), case.options)


@dataclass
class GreedyResult:
    answer: int
    questions: list[int]  # fact indices asked, in order
    useless: int  # questions that revealed nothing (the fact was not in the record)
    known: set[int]  # case-fact positions known at answer time


def greedy_information_gain(world: DiagnosisWorld, case: Case, max_questions: int = 10,
                            min_gain: float = 0.02) -> GreedyResult:
    """Ask the fact with the largest expected information gain (true model; a fact not yet known
    or asked), weighted by the chance that the record holds it, until ``max_questions`` or no
    question is worth ``min_gain`` nats; then give the MAP answer."""
    patient = Patient(world, case)
    state = DialogueState.start(case)
    n_facts = world.preset.n_facts
    visible_facts = {case.facts[p][0] for p in case.visible}
    # the doctor knows how many facts are recorded but hidden (as many as are visible, give or take
    # one), not which: a fact it has not seen is in the record with this probability
    p_rec = len(case.hidden) / max(n_facts - len(case.visible), 1)
    asked: list[int] = []
    useless = 0
    while len(asked) < max_questions:
        known = world.known_facts(case, state.known)
        cands = [j for j in range(n_facts) if j not in visible_facts and j not in asked]
        if not cands:
            break
        gain = p_rec * world.expected_information_gain(known, case.options, cands)
        best = int(np.argmax(gain))
        if gain[best] < min_gain:
            break
        j = cands[best]
        asked.append(j)
        rep = patient.reply(world.ask_text(j))
        if rep.position is None or rep.position in state.known:
            useless += 1
        else:
            state.known.add(rep.position)
    answer = world.map_answer(world.known_facts(case, state.known), case.options)
    return GreedyResult(answer, asked, useless, set(state.known))


# ------------------------------------------------------------------------------ scripted dialogues


def render_dialogue(world: DiagnosisWorld, case: Case, questions: list[int], answer: int | None) -> list[tuple[str, str | None]]:
    """Doctor turns and the patient's replies for a scripted dialogue: ask each fact in
    ``questions``, then give ``answer`` (no reply after it). The prompt is ``world.prompt(case)``."""
    patient = Patient(world, case)
    turns: list[tuple[str, str | None]] = []
    for j in questions:
        q = world.ask_text(j)
        turns.append((q, patient.reply(q).text))
    if answer is not None:
        turns.append((world.answer_text(answer), None))
    return turns


def random_questions(world: DiagnosisWorld, case: Case, rng: np.random.Generator, max_questions: int = 4) -> list[int]:
    """0..``max_questions`` distinct facts the doctor cannot see, drawn uniformly: the no-search
    baseline's dialogues (it asks at random, then answers what the Bayes posterior favours)."""
    visible_facts = {case.facts[p][0] for p in case.visible}
    cands = [j for j in range(world.preset.n_facts) if j not in visible_facts]
    k = int(rng.integers(0, min(max_questions, len(cands)) + 1))
    return [int(j) for j in rng.choice(cands, size=k, replace=False)] if k else []


# ---------------------------------------------------------------------------------- dialogue tree


@dataclass(frozen=True)
class TreeState:
    """A node of the dialogue tree: case ``case`` of the env, the facts asked so far, the answer."""

    case: int
    asked: tuple[int, ...] = ()
    answer: int | None = None

    @property
    def depth(self) -> int:
        return len(self.asked) + (self.answer is not None)


class DialogueTreeEnv:
    """ProMed's dialogue tree for the generic MCTS (``warmstart.search.mcts.TreeEnv``).

    A node's children are at most ``max_children``: the answer the Bayes posterior favours given
    what is known, and the ``max_children - 1`` unseen facts with the largest expected information
    gain under the true model (asking the others is never proposed; the paper samples children from
    the LM). Past ``max_questions`` questions only the answer is left. A node's value is the
    Shapley-weighted share of the case's facts known (``weights`` per case, summing to 1), plus
    ``answer_bonus`` when it is a right answer, discounted ``discount`` per level (the paper
    discounts backed-up values per level; a value computed at depth d times ``discount**d`` is the
    same ordering with the generic, undiscounted backup).
    """

    def __init__(self, world: DiagnosisWorld, cases: list[Case], weights: list[np.ndarray], max_questions: int = 10,
                 max_children: int = 8, discount: float = 0.9, answer_bonus: float = 2.0):
        if max_children < 2:
            raise ValueError("max_children must be at least 2 (the answer and one question)")
        self.world, self.cases, self.weights = world, cases, weights
        self.max_questions, self.max_children = max_questions, max_children
        self.discount, self.answer_bonus = discount, answer_bonus

    def known(self, state: TreeState) -> set[int]:
        case = self.cases[state.case]
        out = set(case.visible)
        for j in state.asked:
            p = case.position(j)
            if p is not None:
                out.add(p)
        return out

    def is_terminal(self, state: TreeState) -> bool:
        return state.answer is not None

    def expand(self, states: list[TreeState]) -> list[list[tuple[tuple[str, int], float, TreeState]]]:
        out = []
        for s in states:
            case, w = self.cases[s.case], self.world
            known = w.known_facts(case, self.known(s))
            ans = w.map_answer(known, case.options)
            kids = [(("answer", ans), 1.0, TreeState(s.case, s.asked, ans))]
            if len(s.asked) < self.max_questions:
                seen = {case.facts[p][0] for p in case.visible} | set(s.asked)
                cands = [j for j in range(w.preset.n_facts) if j not in seen]
                if cands:
                    gain = w.expected_information_gain(known, case.options, cands)
                    top = np.argsort(-gain, kind="stable")[: self.max_children - 1]
                    kids += [(("ask", cands[i]), 1.0, TreeState(s.case, s.asked + (cands[i],))) for i in top]
            out.append(kids)
        return out

    def finish(self, state: TreeState) -> tuple[list[int], int]:
        """The dialogue a (possibly unfinished) path ends in: its questions, and its answer or, when
        the path stops before answering, the answer the posterior favours given what is known."""
        if state.answer is not None:
            return list(state.asked), state.answer
        case = self.cases[state.case]
        return list(state.asked), self.world.map_answer(self.world.known_facts(case, self.known(state)), case.options)

    def evaluate(self, states: list[TreeState]) -> list[float]:
        vals = []
        for s in states:
            case = self.cases[s.case]
            cov = float(sum(self.weights[s.case][p] for p in self.known(s)))
            right = s.answer is not None and s.answer == case.disease
            vals.append(self.discount ** s.depth * (cov + self.answer_bonus * right))
        return vals


# ---------------------------------------------------------------------------------- the task


class ProMedConfig(PluginConfig):
    kind: str = "promed"
    preset: Literal["small", "larger"] = Field("small", description="world size: 'small' (4 diseases, 12 facts) or 'larger' (8, 24)")
    world_seed: int = Field(0, description="seed of the Bayes net (the same world for every run seed)")
    data_seed: int = Field(0, description="seed of the held-out cases (fixed, so evaluations compare across runs)")
    n_test: int = Field(500, ge=1, description="held-out cases (never drawn for training)")
    max_questions: int = Field(10, ge=0, le=10, description="questions before the doctor must answer (10 in the paper; 0: answer at once)")
    temperature: float = Field(2.0, gt=0, description="T of the Shapley weights softmax(phi / T)")
    shapley: Literal["auto", "exact", "monte_carlo"] = Field(
        "auto", description="Shapley values: exact over all subsets, Monte-Carlo permutations (3-50, stop at 0.01), or exact up to 16 facts")


def case_weights(world: DiagnosisWorld, case: Case, temperature: float = 2.0, method: str = "auto",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """softmax(phi / T) over the case's recorded facts, phi the Shapley values of v(S)."""
    m = len(case.facts)
    if method == "exact" or (method == "auto" and m <= 16):
        phi = exact_shapley(world.value_table(case))
    else:
        rng = rng if rng is not None else np.random.default_rng(0)
        phi, _ = monte_carlo_shapley(lambda masks: world.value_of_masks(case, masks), m, rng)
    return shapley_weights(phi, temperature)


class ProMedTask:
    """Diagnosis by dialogue: a multi-turn task (``respond``) over cases of a :class:`DiagnosisWorld`.

    Each policy turn is ``ask FACT`` (the patient replies; up to ``max_questions``) or ``answer
    DISEASE`` (the episode ends). Per-turn reward terms, combined by the learner with its weights:
    ``sig`` (Shapley information gain of the facts a question newly reveals), ``sig_right`` (the same,
    filled in once the answer is known right; 0 otherwise), ``correct`` (on the answer turn) and
    ``format`` (1 for a turn in the grammar). What each question did is kept in
    ``episode.info["dialogue"]`` for the metrics.
    """

    answer_marker = "answer "
    max_new_tokens = 14  # "answer angina" + EOS; 11 turns with the longest replies fit in 640 positions

    def __init__(self, cfg: ProMedConfig, split: str = "train", seed: int = 0):
        self.cfg, self.split, self.seed = cfg, split, seed
        self.world = DiagnosisWorld(cfg.preset, cfg.world_seed)
        self.max_questions = cfg.max_questions
        self.max_turns = cfg.max_questions + 1
        rng = np.random.default_rng(10_000 + cfg.data_seed)
        test: list[Case] = []
        seen: set[Case] = set()
        while len(test) < cfg.n_test:
            c = self.world.sample_case(rng)
            if c not in seen:
                seen.add(c)
                test.append(c)
        self._test_cases = seen
        self.test_problems = [self.problem(c) for c in test]
        self.problems = self.test_problems if split == "test" else []

    # -- data
    def problem(self, case: Case) -> Problem:
        w = case_weights(self.world, case, self.cfg.temperature, self.cfg.shapley)
        return Problem(prompt=self.world.prompt(case), answer=self.world.disease_names[case.disease],
                       info={"case": case, "weights": w})

    def sample_cases(self, n: int, rng: np.random.Generator) -> list[Case]:
        """``n`` fresh training cases (never a held-out one)."""
        out: list[Case] = []
        while len(out) < n:
            c = self.world.sample_case(rng)
            if c not in self._test_cases:
                out.append(c)
        return out

    def sample_problems(self, n: int, generator) -> list[Problem]:
        """Fresh training cases drawn from a torch ``generator`` (the run's per-step stream)."""
        import torch

        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return [self.problem(c) for c in self.sample_cases(n, np.random.default_rng(seed))]

    def eval_problems(self, n: int) -> list[Problem]:
        return self.test_problems[:n]

    # -- the multi-turn contract
    def respond(self, episode, turn: int) -> TurnResult:
        case: Case = episode.info["case"]
        weights = episode.info["weights"]
        st: DialogueState = episode.info.setdefault("dialogue", DialogueState.start(case))
        t = parse_turn(episode.turn_texts[turn])
        if t.kind == "answer" or turn >= self.max_questions:
            # an answer, or a question past the limit (no answer: wrong)
            ok_format = t.kind == "answer" and t.word in {self.world.disease_names[k] for k in case.options}
            right = t.kind == "answer" and t.word == self.world.disease_names[case.disease]
            if t.kind == "answer":
                st.answer = self.world.disease_index.get(t.word, -1)
            for k in range(turn):  # SIG * 1[right] on the questions, now that the outcome is known
                episode.turn_rewards[k]["sig_right"] = episode.turn_rewards[k].get("sig", 0.0) * right
            return TurnResult(rewards={"sig": 0.0, "sig_right": 0.0, "correct": float(right), "format": float(ok_format)},
                              done=True)
        rep = Patient(self.world, case).reply(t)
        new = rep.position if rep.position is not None and rep.position not in st.known else None
        sig = shapley_information_gain(weights, [] if new is None else [new], st.known)
        st.asked.append(t.word if t.kind == "ask" else episode.turn_texts[turn])
        st.revealed.append(new)
        if new is not None:
            st.known.add(new)
        return TurnResult(rewards={"sig": sig, "sig_right": 0.0, "correct": 0.0, "format": float(rep.status != "malformed")},
                          message=rep.text)

    # -- metrics
    def dialogue_metrics(self, episodes) -> dict[str, float]:
        """Accuracy, questions per dialogue, share of useless questions (revealing nothing new),
        mean SIG per question, information coverage (Shapley weight of the facts known at answer
        time), share of dialogues that ended with a well-formed answer."""
        n = max(len(episodes), 1)
        right = questions = useless = answered = 0
        sig_total = cov_total = 0.0
        for e in episodes:
            case, w = e.info["case"], e.info["weights"]
            st = e.info.get("dialogue") or DialogueState.start(case)
            last = e.turn_rewards[-1] if e.turn_rewards else {}
            right += last.get("correct", 0.0) >= 1.0
            answered += last.get("format", 0.0) >= 1.0 and st.answer is not None
            questions += len(st.asked)
            useless += sum(r is None for r in st.revealed)
            sig_total += sum(t.get("sig", 0.0) for t in e.turn_rewards)
            cov_total += float(sum(w[p] for p in st.known))
        return {"accuracy": right / n, "questions": questions / n, "useless_share": useless / max(questions, 1),
                "sig_per_question": sig_total / max(questions, 1), "coverage": cov_total / n, "answered": answered / n}

    def bayes_ceilings(self, problems: list[Problem]) -> dict[str, float]:
        """Accuracy of the Bayes-optimal policies on the same cases: answering at once from the
        visible facts, the all-facts oracle, and the greedy information-gain questioner."""
        cases = [p.info["case"] for p in problems]
        greedy = [greedy_information_gain(self.world, c, self.max_questions) for c in cases]
        n = max(len(cases), 1)
        return {
            "bayes_at_once": sum(at_once_answer(self.world, c) == c.disease for c in cases) / n,
            "bayes_oracle": sum(oracle_answer(self.world, c) == c.disease for c in cases) / n,
            "bayes_greedy": sum(g.answer == c.disease for g, c in zip(greedy, cases)) / n,
            "bayes_greedy_questions": sum(len(g.questions) for g in greedy) / n,
        }

    # -- the rest of the multi-turn task contract (verifier, metrics)
    def is_correct(self, text: str, problem_answer: str) -> bool:
        """Whether a doctor turn (or a dialogue's text ending with one) answers ``problem_answer``."""
        t = parse_turn(text.strip().split("\n")[-1])
        return t.kind == "answer" and t.word == problem_answer

    def episode_metrics(self, texts: list[str]) -> dict[str, float]:
        return {}

    def turn_metrics(self, episodes) -> dict[str, float]:
        """What evaluation reports: :meth:`dialogue_metrics`, the Bayes ceilings on the same cases,
        the number of cases and the mean dialogue length in tokens."""
        problems = [Problem(e.prompt, e.info["answer"], info={"case": e.info["case"]}) for e in episodes]
        out = {"n": len(episodes)}
        out.update(self.dialogue_metrics(episodes))
        out.update(self.bayes_ceilings(problems))
        out["mean_tokens"] = sum(len(e.ids) for e in episodes) / max(len(episodes), 1)
        return out


@TASKS.register("promed", ProMedConfig)
def make_promed(cfg: ProMedConfig, split: str = "train", seed: int = 0) -> ProMedTask:
    """ProMed diagnosis dialogues: ask the patient about facts, then answer (a seeded Bayes-net world)."""
    return ProMedTask(cfg, split, seed)
