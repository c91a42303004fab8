"""BabyAI (from the ``minigrid`` package) for LID: observations as sequences of words, expert
demonstrations from minigrid's ``BabyAIBot``, seen/unseen goal-combination splits, batched
rollouts of a sequence policy and hindsight relabelling.

**Observations as a sequence** (METHODS.md C.1). :func:`describe` turns one BabyAI observation and
the action history into :class:`ObsWords`: the mission's words, the last ``history`` actions (as
words: ``left``, ``forward``, ...) and one entry per visible object -- its colour, type, state (doors
only) and its position relative to the agent, in words (``two left``, ``three ahead``). The policy
(:mod:`warmstart.policies.lid`) embeds each mission/history word as one sequence element and each
object as *one* element (its fields projected to the model width). Two encodings of the same
information: ``natural`` (the words themselves, so a pretrained LM's embeddings of ``red`` and
``ball`` carry meaning) and ``arbitrary`` (each word replaced by a fixed random token of the LM's
vocabulary -- same structure, no meaning), as in the paper's input-format ablation; the encoding
is applied by the policy when it builds its word table (:func:`word_token_ids`).

**Goal combinations.** On ``GoTo``-style levels the mission is ``go to the/a COLOUR TYPE``;
``TaskSplit`` holds out some colour x type combinations: training missions (bot demos and the
policy's own rollouts) never name them, evaluation reports success on both sets. Objects of the
held-out combinations still appear as distractors; only the *goal* combination is new.

**Hindsight relabelling** (METHODS.md C.4). A failed GoTo episode still brought the agent in front
of some objects; :func:`relabel` rewrites it as a demonstration of ``go to the COLOUR TYPE`` for the
first object it faced, cut at that step -- a mission it really accomplished, which
:func:`replay_succeeds` checks by replaying the actions in a fresh env with that instruction.
Relabels never name a held-out combination (that would leak the unseen split into training).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.errors import WarmstartError
from warmstart.registry import TASKS

# minigrid's encodings, copied as plain tables so the encoder can be tested on a hand-made grid
# without importing minigrid (checked against minigrid.core.constants in the tests)
IDX_TO_OBJECT = {0: "unseen", 1: "empty", 2: "wall", 3: "floor", 4: "door", 5: "key", 6: "ball", 7: "box",
                 8: "goal", 9: "lava", 10: "agent"}
IDX_TO_COLOR = {0: "red", 1: "green", 2: "blue", 3: "purple", 4: "yellow", 5: "grey"}
IDX_TO_STATE = {0: "open", 1: "closed", 2: "locked"}
ACTION_WORDS = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
COLORS = tuple(IDX_TO_COLOR.values())
OBJECT_TYPES = ("ball", "box", "key")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# cells that are scenery, not objects: never listed as elements
_SCENERY = {"unseen", "empty", "wall", "floor", "agent"}

# Every word an observation can contain. Mission words cover the BabyAI grammar of the single-room
# levels (GoTo/Pickup/PutNext/Open with locations); a word outside this list is a clear error.
MISSION_WORDS = (
    "go", "to", "the", "a", "pick", "up", "put", "next", "open", "and", "then", "after", "you",
    "in", "front", "of", "behind", "on", "your", "left", "right", "door", "ball", "box", "key",
    *COLORS,
)
POSITION_WORDS = ("left", "right", "straight", "ahead", "here", *NUMBER_WORDS[:7])
VOCAB = tuple(dict.fromkeys(("<pad>", *MISSION_WORDS, *ACTION_WORDS, *POSITION_WORDS, *IDX_TO_STATE.values(),
                             *(o for o in IDX_TO_OBJECT.values() if o not in _SCENERY))))
PAD = 0  # index of "<pad>" in VOCAB

# an object element has these fields; each is up to FIELD_WORDS words (padded with <pad>)
OBJECT_FIELDS = ("color", "type", "state", "across", "ahead")
FIELD_WORDS = 2


@dataclass(frozen=True)
class ObsWords:
    """One observation as words: ``mission`` and ``history`` are word sequences; each object is a
    tuple of ``len(OBJECT_FIELDS)`` phrases (tuples of words; the state phrase is empty unless the
    object is a door)."""

    mission: tuple[str, ...]
    history: tuple[str, ...]
    objects: tuple[tuple[tuple[str, ...], ...], ...]


def _offset_words(n: int, positive: str, negative: str, zero: str) -> tuple[str, ...]:
    if n == 0:
        return (zero,)
    return (NUMBER_WORDS[abs(n)], positive if n > 0 else negative)


def visible_objects(image: np.ndarray) -> list[tuple[tuple[str, ...], ...]]:
    """The objects in a BabyAI egocentric view ``image`` (V, V, 3) of (object, colour, state) ids.

    minigrid puts the agent at column V//2 of the last row, facing row 0; so cell (i, j) is
    ``i - V//2`` cells to the agent's right and ``V-1 - j`` cells ahead. Objects are listed nearest
    first (then left to right), a stable order for the sequence."""
    V = image.shape[0]
    found = []
    for i in range(V):
        for j in range(V):
            obj = IDX_TO_OBJECT[int(image[i, j, 0])]
            if obj in _SCENERY:
                continue
            across, ahead = i - V // 2, V - 1 - j
            state = (IDX_TO_STATE[int(image[i, j, 2])],) if obj == "door" else ()
            fields = (
                (IDX_TO_COLOR[int(image[i, j, 1])],),
                (obj,),
                state,
                _offset_words(across, "right", "left", "straight"),
                _offset_words(ahead, "ahead", "ahead", "here"),
            )
            found.append((abs(across) + ahead, across, fields))
    found.sort(key=lambda x: (x[0], x[1]))
    return [f for _, _, f in found]


def describe(obs: dict, actions: Sequence[int], history: int, mission: str | None = None) -> ObsWords:
    """:class:`ObsWords` for a BabyAI observation dict (``image``, ``mission``) after ``actions``
    were taken; keeps the last ``history`` actions. ``mission`` overrides the observation's own
    (hindsight relabelling re-describes the same steps under another mission)."""
    text = (mission if mission is not None else obs["mission"]).lower().split()
    unknown = [w for w in text if w not in VOCAB]
    if unknown:
        raise WarmstartError(
            f"BabyAI mission {' '.join(text)!r} has words outside the encoder's vocabulary: {unknown}. "
            "The LID encoder covers the single-room GoTo/Pickup/PutNext/Open grammar; pick such a level."
        )
    hist = tuple(ACTION_WORDS[int(a)] for a in actions[len(actions) - history:]) if history > 0 else ()
    return ObsWords(tuple(text), hist, tuple(visible_objects(np.asarray(obs["image"]))))


def as_sentence(words: ObsWords) -> str:
    """The natural-language rendering of an observation (for display and tests):
    ``go to the red ball | forward left | red ball two left three ahead ; ...``."""
    objs = " ; ".join(" ".join(w for phrase in o for w in phrase) for o in words.objects)
    return f"{' '.join(words.mission)} | {' '.join(words.history)} | {objs}"


def word_token_ids(tokenizer, encoding: str, seed: int = 0) -> list[list[int]]:
    """For each word of :data:`VOCAB`, the LM token ids whose embeddings initialise it.

    ``natural``: the tokenizer's ids for `` word`` (with the leading space a word has inside a
    sentence). ``arbitrary``: one token id drawn at random (without repetition, fixed by ``seed``)
    from the vocabulary -- the paper's arbitrary-token input, carrying the same information."""
    if encoding == "natural":
        return [[] if w == "<pad>" else tokenizer.encode(" " + w, add_special_tokens=False) for w in VOCAB]
    if encoding == "arbitrary":
        rng = np.random.default_rng(seed)
        # skip the first 1000 ids: special tokens and single bytes, which are not word-like
        picks = rng.choice(np.arange(1000, len(tokenizer)), size=len(VOCAB), replace=False)
        return [[] if w == "<pad>" else [int(t)] for w, t in zip(VOCAB, picks)]
    raise WarmstartError(f"unknown observation encoding {encoding!r}: use 'natural' or 'arbitrary'.")


# ------------------------------------------------------------------------------------- splits


def goal_of(mission: str) -> tuple[str, str] | None:
    """(colour, type) of a ``go to the COLOUR TYPE`` / ``pick up a COLOUR TYPE`` mission, else None."""
    words = mission.lower().split()
    for k in range(len(words) - 1):
        if words[k] in COLORS and words[k + 1] in OBJECT_TYPES:
            return words[k], words[k + 1]
    return None


DEFAULT_HELD_OUT = ("red ball", "green box", "blue key", "purple ball", "yellow box", "grey key")


@dataclass(frozen=True)
class TaskSplit:
    """Which colour x type goal combinations are held out of training. The default holds out 6 of
    18 so that every colour and every type still appears in training goals (a *combination* is new,
    never a word)."""

    held_out: frozenset[tuple[str, str]]

    @classmethod
    def from_names(cls, names: Sequence[str] = DEFAULT_HELD_OUT) -> "TaskSplit":
        pairs = []
        for n in names:
            parts = n.split()
            if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in OBJECT_TYPES:
                raise WarmstartError(f"held-out goal {n!r} must be 'COLOUR TYPE' with COLOUR in {COLORS} and TYPE in {OBJECT_TYPES}.")
            pairs.append((parts[0], parts[1]))
        return cls(frozenset(pairs))

    def split_of(self, mission: str) -> str:
        g = goal_of(mission)
        if g is None:
            raise WarmstartError(f"mission {mission!r} names no COLOUR TYPE goal; seen/unseen splits need one.")
        return "unseen" if g in self.held_out else "seen"


# ------------------------------------------------------------------------------------- envs


def make_env(level: str, max_steps: int | None = None):
    """``gymnasium.make`` of a BabyAI level (minigrid registers them on import)."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers BabyAI-*)

    kwargs = {} if max_steps is None else {"max_steps": max_steps}
    try:
        return gym.make(level, disable_env_checker=True, **kwargs)
    except gym.error.Error as e:
        raise WarmstartError(f"BabyAI level {level!r}: gymnasium cannot make it ({e}).") from None


def quiet_reset(env, seed: int):
    """``env.reset(seed=seed)`` without minigrid's 'Sampling rejected' prints (one per resample)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return env.reset(seed=seed)


def mission_seeds(level: str, split: TaskSplit, which: str, n: int, start: int) -> list[int]:
    """The first ``n`` reset seeds from ``start`` on whose mission belongs to ``which``
    (``seen``/``unseen``). Training and evaluation use disjoint seed ranges."""
    env = make_env(level)
    out, s = [], start
    try:
        while len(out) < n:
            obs, _ = quiet_reset(env, s)
            if split.split_of(obs["mission"]) == which:
                out.append(s)
            s += 1
            if s - start > 200 * max(n, 1):
                raise WarmstartError(f"{level}: found only {len(out)} of {n} {which} missions in {s - start} seeds.")
    finally:
        env.close()
    return out


# ------------------------------------------------------------------------------------- episodes


@dataclass
class BabyAIEpisode:
    """One episode, kept as what is needed to re-describe it: the reset seed, the mission, the
    actions, the visible objects before each action (``objects[t]`` is what the policy saw when it
    chose ``actions[t]``) and what stood in front of the agent after each action (``faced[t]``:
    (colour, type) or None), which hindsight relabelling reads."""

    seed: int
    mission: str
    actions: list[int] = field(default_factory=list)
    objects: list[tuple] = field(default_factory=list)
    faced: list[tuple[str, str] | None] = field(default_factory=list)
    success: bool = False
    relabelled: bool = False

    def __len__(self) -> int:
        return len(self.actions)

    def steps(self, history: int) -> list[tuple[ObsWords, int]]:
        """(observation words, action) for every step, under this episode's mission."""
        mission = tuple(self.mission.lower().split())
        out = []
        for t, a in enumerate(self.actions):
            hist = tuple(ACTION_WORDS[x] for x in self.actions[max(0, t - history):t]) if history > 0 else ()
            out.append((ObsWords(mission, hist, self.objects[t]), a))
        return out


def _faced(env) -> tuple[str, str] | None:
    u = env.unwrapped
    cell = u.grid.get(*u.front_pos)
    if cell is None or cell.type not in OBJECT_TYPES:
        return None
    return (cell.color, cell.type)


def bot_demos(level: str, seeds: Sequence[int], max_steps: int | None = None) -> list[BabyAIEpisode]:
    """Expert demonstrations from minigrid's ``BabyAIBot`` (one per seed; failed ones are dropped,
    which on the GoTo levels never happens)."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    env = make_env(level, max_steps)
    demos = []
    try:
        for s in seeds:
            obs, _ = quiet_reset(env, s)
            bot = BabyAIBot(env.unwrapped)
            ep = BabyAIEpisode(seed=int(s), mission=obs["mission"])
            done = False
            while not done:
                a = int(bot.replan())
                ep.objects.append(tuple(visible_objects(obs["image"])))
                obs, r, te, tr, _ = env.step(a)
                ep.actions.append(a)
                ep.faced.append(_faced(env))
                done = te or tr
            ep.success = bool(r > 0)
            if ep.success:
                demos.append(ep)
    finally:
        env.close()
    return demos


Act = Callable[[list[ObsWords]], np.ndarray]  # a batch of observations -> one action each


def rollout(level: str, seeds: Sequence[int], act: Act, history: int, max_steps: int | None = None,
            batch: int = 64) -> list[BabyAIEpisode]:
    """One episode per seed with ``act`` choosing actions for every live env at once (a batched
    forward per step). Returns the episodes in seed order."""
    episodes: list[BabyAIEpisode] = []
    for b0 in range(0, len(seeds), batch):
        chunk = list(seeds[b0:b0 + batch])
        envs = [make_env(level, max_steps) for _ in chunk]
        obs = [quiet_reset(e, s)[0] for e, s in zip(envs, chunk)]
        eps = [BabyAIEpisode(seed=int(s), mission=o["mission"]) for s, o in zip(chunk, obs)]
        alive = list(range(len(chunk)))
        while alive:
            words = [describe(obs[i], eps[i].actions, history) for i in alive]
            acts = act(words)
            still = []
            for j, i in enumerate(alive):
                a = int(acts[j])
                eps[i].objects.append(words[j].objects)
                obs[i], r, te, tr, _ = envs[i].step(a)
                eps[i].actions.append(a)
                eps[i].faced.append(_faced(envs[i]))
                if te or tr:
                    eps[i].success = bool(r > 0)
                else:
                    still.append(i)
            alive = still
        for e in envs:
            e.close()
        episodes += eps
    return episodes


# ------------------------------------------------------------------------------------- hindsight


def relabel(ep: BabyAIEpisode, split: TaskSplit | None = None) -> BabyAIEpisode | None:
    """A failed GoTo episode as a demonstration of a mission it did accomplish: ``go to the
    COLOUR TYPE`` for the first object the agent faced, cut after that step. ``None`` when it faced
    no object (or only held-out combinations, which must not enter training)."""
    if ep.success:
        return None
    for t, goal in enumerate(ep.faced):
        if goal is None or (split is not None and goal in split.held_out):
            continue
        # the first time *any* object is faced: no earlier step completed this mission either
        return replace(ep, mission=f"go to the {goal[0]} {goal[1]}", actions=ep.actions[: t + 1],
                       objects=ep.objects[: t + 1], faced=ep.faced[: t + 1], success=True, relabelled=True)
    return None


def replay_succeeds(level: str, ep: BabyAIEpisode, max_steps: int | None = None) -> bool:
    """Replay ``ep.actions`` in a fresh env reset with ``ep.seed`` but instructed with
    ``ep.mission`` (a GoTo instruction built from it); True when the env reports success exactly
    at the last action. This is the check that a relabelled mission was really accomplished."""
    from minigrid.envs.babyai.core.verifier import GoToInstr, ObjDesc

    goal = goal_of(ep.mission)
    if goal is None:
        raise WarmstartError(f"replay_succeeds checks GoTo missions; {ep.mission!r} names no goal.")
    env = make_env(level, max_steps)
    try:
        quiet_reset(env, ep.seed)
        u = env.unwrapped
        u.instrs = GoToInstr(ObjDesc(goal[1], goal[0]))
        u.instrs.reset_verifier(u)
        for t, a in enumerate(ep.actions):
            _, r, te, tr, _ = env.step(a)
            if te or tr:
                return bool(te and r > 0 and t == len(ep.actions) - 1)
        return False
    finally:
        env.close()


# ------------------------------------------------------------------------------------- the task


class BabyAITaskConfig(PluginConfig):
    kind: str = "babyai"
    level: str = Field("BabyAI-GoToLocal-v0", description="a BabyAI level id registered by minigrid (GoTo-style missions)")
    held_out: list[str] = Field(list(DEFAULT_HELD_OUT), description="'COLOUR TYPE' goals never used in training (the unseen split)")
    max_steps: int | None = Field(None, ge=1, description="episode cap; default: the level's own (64 on GoToLocal)")
    demos: int = Field(300, ge=1, description="bot demonstrations on seen-goal training missions")
    train_seed_start: int = Field(0, ge=0, description="first reset seed of the demo missions (rounds use later seeds)")
    eval_seed_start: int = Field(10_000_000, ge=0, description="first reset seed of evaluation missions (disjoint from training)")


class BabyAITask:
    """A BabyAI level with seen/unseen goal splits: bot demos for BC, training mission seeds for
    data gathering, and its own evaluation (``success_rate_seen``/``_unseen``, ``mean_length_*``)."""

    def __init__(self, cfg: BabyAITaskConfig, split: str = "train", seed: int = 0):
        self.cfg, self.split, self.seed = cfg, split, seed
        self.level, self.max_steps = cfg.level, cfg.max_steps
        self.goals = TaskSplit.from_names(cfg.held_out)
        env = make_env(cfg.level, cfg.max_steps)
        self.observation_space, self.action_space = env.observation_space, env.action_space
        env.close()
        self._demos: list[BabyAIEpisode] | None = None

    def mission_seeds(self, which: str, n: int, start: int) -> list[int]:
        return mission_seeds(self.level, self.goals, which, n, start)

    def bot_demos(self) -> list[BabyAIEpisode]:
        """``cfg.demos`` bot demonstrations on seen-goal missions (computed once)."""
        if self._demos is None:
            seeds = self.mission_seeds("seen", self.cfg.demos, self.cfg.train_seed_start)
            self._demos = bot_demos(self.level, seeds, self.max_steps)
        return self._demos

    def make_envs(self, n: int, seed: int, info_keys: tuple[str, ...] = ()):
        """``n`` envs reset with seeds ``seed, seed+1, ...`` and their first observations (dicts:
        BabyAI observations are not flat vectors, so there is no vector env here)."""
        envs = [make_env(self.level, self.max_steps) for _ in range(n)]
        return envs, [quiet_reset(e, seed + i)[0] for i, e in enumerate(envs)]

    def evaluate(self, policy, eval_cfg) -> dict[str, float]:
        """Greedy episodes: ``eval_cfg.n`` per split (seen and unseen goal combinations) from
        ``cfg.eval_seed_start``. Returns ``success_rate_seen``, ``success_rate_unseen``,
        ``mean_length_seen``, ``mean_length_unseen`` and ``success_rate`` (both splits)."""
        out: dict[str, float] = {}
        was_training = policy.training
        policy.eval()
        try:
            for which in ("seen", "unseen"):
                seeds = self.mission_seeds(which, eval_cfg.n, self.cfg.eval_seed_start)
                eps = rollout(self.level, seeds, lambda w: policy.act(w, greedy=True), policy.spec.history,
                              self.max_steps, batch=min(eval_cfg.batch_size, 100))
                out[f"success_rate_{which}"] = float(np.mean([e.success for e in eps]))
                out[f"mean_length_{which}"] = float(np.mean([len(e) for e in eps]))
        finally:
            policy.train(was_training)
        out["success_rate"] = (out["success_rate_seen"] + out["success_rate_unseen"]) / 2
        out["episodes"] = 2 * eval_cfg.n
        return out


@TASKS.register("babyai", BabyAITaskConfig, "a BabyAI level (minigrid) with bot demos and seen/unseen goal splits (LID)")
def build_babyai_task(cfg: BabyAITaskConfig, split: str = "train", seed: int = 0) -> BabyAITask:
    return BabyAITask(cfg, split=split, seed=seed)
