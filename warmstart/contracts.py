"""The seams every method crosses, written once: what each plug-in slot provides.

These are :class:`typing.Protocol` classes. Nothing needs to inherit from them (a user's task or
policy only has to have the members); the engine checks them once, when a recipe is built, against
what each registered phase declares it ``requires`` (see :mod:`warmstart.registry`), so a recipe
that pairs a multi-turn learner with a single-turn task stops before anything runs, with a message
that names the phase, the slot and the missing members.

* :class:`TokenPolicy`     -- an LM acting token by token (encode/decode, batched sampling with
  behaviour log-probs, log-probs for learning, save/load of weights);
* :class:`VectorPolicy`    -- an actor(-critic) on Gymnasium observations (``predict``);
* :class:`SingleTurnTask`  -- problems with reference answers and a verifier;
* :class:`MultiTurnTask`   -- a single-turn task that also answers each policy turn with a
  :class:`~warmstart.tasks.base.TurnResult` (per-turn reward terms, the next environment message or
  the end), and reports metrics of finished episodes;
* :class:`EnvTask`         -- a Gymnasium environment: vector envs for training, its own evaluation;
* :class:`SequencePolicy`, :class:`GoalEnvTask` -- LID's policy over word-sequence observations and
  its goal-conditioned task (expert demos, seen/unseen goal combinations);
* :class:`Phase`           -- a learner; :class:`PhaseBase` gives the no-op hooks.

The engine hands a phase its own 0-based step and the run's global step: a phase keeps no counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from warmstart.errors import ConfigError

if TYPE_CHECKING:  # annotations only: tasks sit in the layer above
    from warmstart.episode import Episode
    from warmstart.tasks.base import Problem, TurnResult


@runtime_checkable
class TokenPolicy(Protocol):
    """A causal LM policy (see :class:`warmstart.policies.lm.LMPolicy`)."""

    model: Any
    pad_id: int
    eos_id: int | None

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]: ...  # encode_prompt of each, batched where it can be

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...  # encode of each, batched where it can be

    def decode(self, ids: list[int]) -> str: ...

    def sample(self, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
               generator=None, batch_size: int | None = None, stop_ids: list[int] | None = None): ...

    def forward_logprobs(self, input_ids, attention_mask, temperature: float = 1.0, with_entropy: bool = False,
                         action_mask=None): ...  # action_mask (B, T-1): a policy may score only those positions (0 elsewhere)

    def save(self, path) -> None: ...

    def load_weights(self, path) -> None: ...


@runtime_checkable
class ImageTokenPolicy(TokenPolicy, Protocol):
    """A token policy that reads images (see :class:`warmstart.policies.vlm.VLMPolicy`): prompts with
    images, and environment messages that bring new ones mid-episode (a tool's output), each image
    written as its placeholder tokens (``images`` per row in ``sample`` and ``forward_logprobs``)."""

    image_token_id: int

    def encode_message(self, text: str, role: str | None, closed: bool = True, images=()) -> list[int]: ...


@runtime_checkable
class VectorPolicy(Protocol):
    """An actor(-critic) over vector observations (see :class:`warmstart.policies.mlp.MLPPolicy`)."""

    def predict(self, obs, deterministic: bool = False, generator=None): ...

    def save(self, path) -> None: ...

    def load_weights(self, path) -> None: ...


@runtime_checkable
class ActorCriticPolicy(VectorPolicy, Protocol):
    """A vector policy with critics, as PPO/PDPPO train it: sample/evaluate actions on normalised
    observations, a value head and (``post_critic`` not None) a post-decision value head."""

    obs_rms: Any
    post_critic: Any

    def normalize_obs(self, obs): ...

    def sample(self, obs, deterministic: bool = False, generator=None): ...

    def evaluate_actions(self, obs, actions, entropy_grad: bool = True): ...

    def value(self, obs): ...

    def post_value(self, obs): ...


@runtime_checkable
class SingleTurnTask(Protocol):
    """Problems with a reference answer, checked by a verifier (see :class:`warmstart.tasks.base.ReasoningTask`)."""

    answer_marker: str
    max_new_tokens: int

    def sample_problems(self, n: int, generator) -> list[Problem]: ...

    def eval_problems(self, n: int) -> list[Problem]: ...

    def is_correct(self, text: str, problem_answer: str) -> bool: ...

    def episode_metrics(self, texts: list[str]) -> dict[str, float]: ...


@runtime_checkable
class RespondsToTurns(Protocol):
    """What the rollout needs to run several turns: after policy turn ``turn`` of ``episode`` the task
    returns the turn's reward terms and either the next environment message or the end of the
    episode. ``respond`` sees the whole episode (its ``turn_texts`` and ``info``), so the same
    contract serves self-correction, a patient answering questions, or a tool's output."""

    max_turns: int
    max_new_tokens: int

    def respond(self, episode: Episode, turn: int) -> TurnResult: ...


@runtime_checkable
class MultiTurnTask(SingleTurnTask, RespondsToTurns, Protocol):
    """A multi-turn task as learners and evaluation use it: problems, a verifier, ``respond``, and
    the metrics of finished episodes (``turn_metrics``, e.g. Acc@t1, Acc@t2, Δ)."""

    def turn_metrics(self, episodes: list[Episode]) -> dict[str, float]: ...


@runtime_checkable
class HasDemos(Protocol):
    """A task with demonstrations: (prompt, completion) pairs for SFT."""

    def demos(self) -> list[tuple[str, str]]: ...


@runtime_checkable
class HasDemoEpisodes(Protocol):
    """A task that builds its own demonstration episodes (e.g. multi-turn ones) for a policy."""

    def demo_episodes(self, policy) -> list[Episode]: ...


@runtime_checkable
class HoldsResources(Protocol):
    """A task (or other plug-in) holding something to release when the run ends, e.g. the tool
    server process it started; the engine calls ``close`` once, however the run ends."""

    def close(self) -> None: ...


@runtime_checkable
class EnvTask(Protocol):
    """A Gymnasium environment (see :class:`warmstart.tasks.gym.GymTask`)."""

    observation_space: Any
    action_space: Any

    def make_envs(self, n: int, seed: int, info_keys: tuple[str, ...] = ()): ...

    def evaluate(self, policy, eval_cfg) -> dict[str, float]: ...


@runtime_checkable
class SequencePolicy(Protocol):
    """A policy over observations described as word sequences (see
    :class:`warmstart.policies.lid.LIDPolicy`): batched action choice, the encoding of a batch for
    learning, and ``spec.history`` (how many past actions its observations carry)."""

    spec: Any

    def act(self, obs, greedy: bool = True, generator=None, temperature: float = 1.0): ...

    def encode(self, obs): ...

    def save(self, path) -> None: ...

    def load_weights(self, path) -> None: ...


@runtime_checkable
class GoalEnvTask(EnvTask, Protocol):
    """A goal-conditioned environment with expert demonstrations and seen/unseen goal splits (see
    :class:`warmstart.tasks.babyai.BabyAITask`)."""

    level: str
    goals: Any

    def bot_demos(self) -> list: ...

    def mission_seeds(self, which: str, n: int, start: int) -> list[int]: ...


@runtime_checkable
class Phase(Protocol):
    """A learner registered in ``PHASES``, constructed as ``factory(cfg, ctx)``."""

    key_metrics: tuple[str, ...]

    def step(self, step: int, global_step: int) -> dict[str, float]: ...

    def on_start(self, step: int) -> None: ...

    def on_end(self) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class PhaseBase:
    """No-op hooks for phases. ``key_metrics`` names what the progress bar and ``curves.png`` show
    (the engine falls back to a few common names when empty)."""

    key_metrics: tuple[str, ...] = ()

    def on_start(self, step: int) -> None:
        """Called before the phase's first step (``step`` > 0 when resuming mid-phase)."""

    def on_end(self) -> None:
        """Called after the phase's last step, before its evaluation."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


_DESCRIBE = {
    TokenPolicy: "a token policy (an LM: policy.kind: lm)",
    VectorPolicy: "a vector policy (policy.kind: mlp)",
    ActorCriticPolicy: "an actor-critic vector policy (policy.kind: mlp)",
    SingleTurnTask: "a reasoning task with reference answers (e.g. chain_arithmetic, jsonl)",
    MultiTurnTask: "a multi-turn task with respond() (e.g. self_correct_arithmetic)",
    EnvTask: "a Gymnasium task (task.kind: gym)",
    HasDemos: "a task with demonstrations (demos())",
    SequencePolicy: "a sequence policy over described observations (policy.kind: lid)",
    GoalEnvTask: "a goal-conditioned env task with expert demos and goal splits (task.kind: babyai)",
}


def missing_members(obj: Any, proto: type) -> list[str]:
    """Members of ``proto`` that ``obj`` lacks (empty when it satisfies the protocol)."""
    import typing

    attrs = getattr(proto, "__protocol_attrs__", None)
    if attrs is None:  # Python 3.11
        attrs = typing._get_protocol_attrs(proto)
    names = [n for n in attrs if not n.startswith("_")]
    return sorted(n for n in names if not hasattr(obj, n))


def check_requirements(who: str, requires: dict[str, type], slots: dict[str, Any]) -> None:
    """Raise a :class:`ConfigError` when a slot's object (``slots["task"]``...) lacks a protocol that
    ``requires`` names for it. ``who`` names the plug-in (``phase 'grpo' (grpo)``)."""
    problems = []
    for slot, proto in requires.items():
        obj = slots.get(slot)
        if obj is None or isinstance(obj, proto):
            continue
        lacks = missing_members(obj, proto)
        problems.append(f"{who} needs {_DESCRIBE.get(proto, proto.__name__)} as its {slot}; "
                        f"the {slot} given ({type(obj).__name__}) lacks {', '.join(lacks) or 'members of ' + proto.__name__}.")
    if problems:
        raise ConfigError(" ".join(problems) + " Nothing was run or written.")
