"""The one record type that travels init -> rollout -> search -> reward -> learn.

Two shapes of the same idea:

* :class:`Episode` -- one interaction of a *token* policy: the prompt, everything that followed it as
  token ids (policy turns and environment/tool messages alike), a mask of which of those tokens the
  policy produced, their behaviour log-probs, turn spans, and the reward terms by name (final and
  per turn). Search, rewards and learners read and write these; nothing else passes between stages.
  :func:`collate` turns a list of them into padded tensors (:class:`TokenBatch`) for a learner.
* :class:`Transitions` -- a rollout of a *vector* policy over ``N`` parallel envs for ``T`` steps:
  observations, actions, log-probs, rewards, terminations, values (and anything a method adds, such
  as post-decision states, in ``extra``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Episode:
    """One token-policy interaction, possibly multi-turn.

    ``ids`` holds every token after the prompt. ``action_mask[i]`` is True when ``ids[i]`` was
    produced by the policy (those tokens get a loss), False for environment or tool tokens (no loss,
    no gradient). ``logprobs[i]`` is the behaviour policy's log-prob of ``ids[i]`` (0.0 where the
    mask is False). ``turns`` lists the ``[start, end)`` spans of the policy turns within ``ids``.
    ``rewards`` keeps each final reward term by name (``None`` when a reward function failed);
    ``turn_rewards[k]`` the terms given to turn ``k``. ``reward`` is the weighted total used by the
    learner; ``group`` ties together the samples of one prompt (GRPO groups).
    """

    prompt: str
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    action_mask: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[tuple[int, int]] = field(default_factory=list)
    text: str = ""  # decoded policy output (all turns joined) for rewards and display
    turn_texts: list[str] = field(default_factory=list)
    rewards: dict[str, float | None] = field(default_factory=dict)
    turn_rewards: list[dict[str, float | None]] = field(default_factory=list)
    reward: float = 0.0
    group: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # what a vision-language (or any multimodal) policy consumes besides tokens: the prompt's images
    # (PIL images or arrays; the policy's processor turns them into tensors) and named per-episode
    # tensors. Text-only runs leave them empty and nothing downstream changes.
    images: list[Any] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def turn_reward_total(self) -> float:
        """Sum of every turn's reward terms (None counts 0)."""
        return sum(v for terms in self.turn_rewards for v in terms.values() if v is not None)

    def add_turn(self, ids: list[int], logprobs: list[float], text: str = "") -> None:
        """Append a policy turn (tokens that get a loss)."""
        start = len(self.ids)
        self.ids.extend(ids)
        self.action_mask.extend([True] * len(ids))
        self.logprobs.extend(logprobs)
        self.turns.append((start, len(self.ids)))
        self.turn_texts.append(text)
        self.turn_rewards.append({})
        self.text += text

    def add_env(self, ids: list[int]) -> None:
        """Append environment/tool tokens (masked out of the loss)."""
        self.ids.extend(ids)
        self.action_mask.extend([False] * len(ids))
        self.logprobs.extend([0.0] * len(ids))

    def check(self) -> None:
        """Raise ValueError if the parallel lists disagree in length (a bug, not user error)."""
        n = len(self.ids)
        if len(self.action_mask) != n or len(self.logprobs) != n:
            raise ValueError(
                f"episode is inconsistent: {n} ids, {len(self.action_mask)} mask entries, "
                f"{len(self.logprobs)} logprobs"
            )


@dataclass
class TokenBatch:
    """Padded tensors for a learner; built by :func:`collate`.

    Shapes: ``input_ids``/``attention_mask`` are (B, T) with prompt + interaction, right-padded.
    Everything indexed by *target* position is (B, T-1): position ``t`` scores ``input_ids[:, t+1]``
    from the logits at ``t``. ``action_mask`` marks policy tokens, ``turn_index`` the policy turn
    (-1 elsewhere), ``old_logprobs`` the behaviour log-probs, ``token_rewards`` per-turn rewards
    placed on the last token of their turn.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    old_logprobs: torch.Tensor
    turn_index: torch.Tensor
    rewards: torch.Tensor  # (B,) total reward per episode
    groups: torch.Tensor  # (B,)
    images: list[list[Any]] | None = None  # per row, the episode's images (None for a text-only batch)
    tensors: dict[str, torch.Tensor] | None = None  # per-episode tensors stacked along a new dim 0 (B, ...)

    @property
    def num_action_tokens(self) -> int:
        return int(self.action_mask.sum())


def collate(episodes: list[Episode], pad_id: int, pad_to_multiple: int = 8) -> TokenBatch:
    """Pad a list of episodes into a :class:`TokenBatch` (right padding; causal attention makes the
    pad positions invisible to the real ones). Lengths are rounded up to ``pad_to_multiple``: CPU
    kernels are tuned per shape, and fewer distinct shapes means fewer slow first calls."""
    if not episodes:
        raise ValueError("collate() needs at least one episode")
    seqs = [e.prompt_ids + e.ids for e in episodes]
    T = max(len(s) for s in seqs)
    T = -(-T // pad_to_multiple) * pad_to_multiple if pad_to_multiple > 1 else T
    # rows are built as Python lists and converted once per tensor: per-row tensor writes cost ~30 us
    # a row, i.e. milliseconds for an SFT batch of 128
    ids_rows, att_rows, act_rows, lp_rows, turn_rows = [], [], [], [], []
    for e, s in zip(episodes, seqs):
        e.check()
        if not e.prompt_ids:  # the first token needs a context to be predicted from
            raise ValueError(f"collate(): episode {e.prompt[:40]!r} has no prompt tokens; a policy's encode_prompt "
                             "gives at least BOS or the chat template's tokens")
        pad = T - len(s)
        ids_rows.append(s + [pad_id] * pad)
        att_rows.append([1] * len(s) + [0] * pad)
        # token ids[i] sits at input position p+i and is predicted at target position p+i-1
        before, after = len(e.prompt_ids) - 1, T - len(s)  # target positions before / after the interaction
        act_rows.append([0] * before + list(e.action_mask) + [0] * after)
        lp_rows.append([0.0] * before + list(e.logprobs) + [0.0] * after)
        turn = [-1] * len(e.ids)
        for k, (s0, s1) in enumerate(e.turns):
            turn[s0:s1] = [k] * (s1 - s0)
        turn_rows.append([-1] * before + turn + [-1] * after)
    input_ids = torch.tensor(ids_rows, dtype=torch.long)
    attention = torch.tensor(att_rows, dtype=torch.long)
    action = torch.tensor(act_rows, dtype=torch.bool)
    old_lp = torch.tensor(lp_rows, dtype=torch.float32)
    turn_idx = torch.tensor(turn_rows, dtype=torch.long)
    rewards = torch.tensor([float(e.reward) for e in episodes], dtype=torch.float32)
    groups = torch.tensor([e.group for e in episodes], dtype=torch.long)
    images = [list(e.images) for e in episodes] if any(e.images for e in episodes) else None
    tensors = None
    if any(e.tensors for e in episodes):
        keys = set(episodes[0].tensors)
        if any(set(e.tensors) != keys for e in episodes):
            raise ValueError("collate(): every episode must carry the same named tensors")
        tensors = {k: torch.stack([e.tensors[k] for e in episodes]) for k in sorted(keys)}
    return TokenBatch(input_ids, attention, action, old_lp, turn_idx, rewards, groups, images, tensors)


def turn_reward_matrix(episodes: list[Episode], num_turns: int | None = None) -> torch.Tensor:
    """(B, K) sum of each turn's reward terms (None counts 0); turns an episode never took are 0."""
    K = num_turns or max((len(e.turns) for e in episodes), default=0)
    out = torch.zeros(len(episodes), K)
    for b, e in enumerate(episodes):
        for k, terms in enumerate(e.turn_rewards[:K]):
            out[b, k] = sum(v for v in terms.values() if v is not None)
    return out


def length_buckets(lengths: list[int], max_buckets: int = 4, pad_to: int = 8, overhead: int = 256) -> list[list[int]]:
    """Split row indices into at most ``max_buckets`` groups of similar length so that the padded
    area (rows x longest row, plus ``overhead`` token-slots per extra forward pass) is smallest.

    A batch that mixes 20-token and 60-token sequences wastes half its compute on padding when run
    as one block; learners run the buckets as micro-batches and accumulate gradients, with losses
    normalised by whole-batch counts so the update is the same as the unsplit one.
    """
    if not lengths:
        return []
    r = [-(-n // pad_to) * pad_to for n in lengths]
    vals = sorted(set(r))
    count = [sum(1 for x in r if x == v) for v in vals]
    m = len(vals)
    INF = float("inf")
    # best[k][j]: least cost covering the first j distinct lengths with k buckets
    best = [[INF] * (m + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (m + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, m + 1):
            rows = 0
            for i in range(j - 1, -1, -1):  # bucket holds distinct lengths i..j-1, padded to vals[j-1]
                rows += count[i]
                c = best[k - 1][i] + rows * vals[j - 1] + (overhead if k > 1 else 0)
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_buckets + 1), key=lambda kk: best[kk][m])
    bounds, j = [], m
    while k > 0:
        i = cut[k][j]
        bounds.append((vals[i], vals[j - 1]))
        j, k = i, k - 1
    return [[idx for idx, x in enumerate(r) if lo <= x <= hi] for lo, hi in reversed(bounds)]


@dataclass
class Transitions:
    """A vector-policy rollout: tensors of shape (T, N, ...) for T steps of N parallel envs.

    ``terminated`` marks true ends (no bootstrap), ``truncated`` time-limit ends (bootstrap from
    ``final_values``); ``last_obs``/``last_done`` describe the state after the last step, used to
    bootstrap GAE. Methods add what they need in ``extra`` (e.g. PDPPO's post-decision states).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    values: torch.Tensor
    last_obs: torch.Tensor | None = None
    last_done: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.rewards.shape[0] * self.rewards.shape[1])
