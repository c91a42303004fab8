"""The shared math of every learner: one implementation each, used by token and vector learners.

All functions are pure tensor functions; masks are boolean or 0/1 tensors of the same shape as the
values they select. Shapes in comments: B = batch, T = time/tokens, G = group size. The last section
(Shapley values of facts, ProMed's information gain) is pure math over NumPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import torch

AdvantageScale = Literal["group", "batch", "none"]
LossAggregation = Literal["sequence", "token", "constant"]
KLEstimator = Literal["k1", "k2", "k3"]


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is set (0 when nothing is set, never NaN)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def normalize(x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-std normalisation (over ``mask`` when given; unbiased std as in CleanRL)."""
    if mask is None:
        return (x - x.mean()) / (x.std() + eps)
    m = mask.to(x.dtype)
    n = m.sum().clamp(min=2.0)
    mean = (x * m).sum() / m.sum().clamp(min=1.0)
    var = (((x - mean) ** 2) * m).sum() / (n - 1)
    return (x - mean) / (var.sqrt() + eps) * m


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, scale: AdvantageScale = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages: reward minus its group's mean, then scaled.

    ``scale='group'`` divides by the group's std (GRPO), ``'batch'`` by the std of the whole batch
    (more robust when groups are small), ``'none'`` leaves the centred reward (Dr. GRPO).
    ``rewards``: (B,), ``groups``: (B,) integer group ids. Stds are sample stds (ddof 1), as in
    DeepSeekMath's GRPO; a group of one gets std 0.
    """
    rewards = rewards.float()
    uniq, inv = torch.unique(groups, return_inverse=True)
    k = len(uniq)
    count = torch.zeros(k).index_add_(0, inv, torch.ones_like(rewards))
    mean = torch.zeros(k).index_add_(0, inv, rewards) / count
    centred = rewards - mean[inv]
    if scale == "none":
        return centred
    if scale == "group":
        ss = torch.zeros(k).index_add_(0, inv, centred**2)
        std = (ss / (count - 1).clamp(min=1.0)).sqrt()
        return centred / (std[inv] + eps)
    if scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.tensor(0.0)
        return centred / (std + eps)
    raise ValueError(f"unknown advantage scale {scale!r}: expected 'group', 'batch' or 'none'")


def group_has_signal(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True where the episode's group has at least two distinct rewards (DAPO's dynamic
    sampling drops the others, whose advantages are all zero)."""
    uniq, inv = torch.unique(groups, return_inverse=True)
    k = len(uniq)
    hi = torch.full((k,), -float("inf")).scatter_reduce(0, inv, rewards.float(), "amax")
    lo = torch.full((k,), float("inf")).scatter_reduce(0, inv, rewards.float(), "amin")
    return (hi - lo > 1e-9)[inv]


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective, as a loss to minimise, elementwise.

    loss = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A), r = exp(logp - old_logp).
    Separate low/high epsilons follow DAPO's clip-higher. Returns ``(loss, ratio, clipped)`` where
    ``clipped`` marks elements whose clipped branch was active (for ``clipfrac``).
    """
    eps_high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped_ratio = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    clipped_obj = clipped_ratio * advantages
    loss = -torch.minimum(unclipped, clipped_obj)
    clipped = (clipped_obj < unclipped).detach()
    return loss, ratio, clipped


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLEstimator = "k3") -> torch.Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

    With log-ratio l = ref_logp - logp: k1 = -l, k2 = l^2 / 2, k3 = exp(l) - l - 1 (unbiased, >= 0).
    """
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio  # = exp(l) - l - 1, without cancellation near 0
    raise ValueError(f"unknown KL estimator {kind!r}: expected 'k1', 'k2' or 'k3'")


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """The debug ``approx_kl``, elementwise: the k3 estimate of KL(behaviour || current) from the
    behaviour policy's samples, ``(r - 1) - log r`` with ``r = exp(logp - old_logp)`` (CleanRL's).
    Every learner logs this one definition."""
    return kl_estimate(old_logp, logp, "k3")


def clip_fraction(ratio: torch.Tensor, eps_low: float, eps_high: float | None = None) -> torch.Tensor:
    """The debug ``clipfrac``, elementwise (0/1): the ratio left ``[1 - eps_low, 1 + eps_high]``
    (CleanRL's definition; whether the clipped branch was the active one is ``clip_active``)."""
    eps_high = eps_low if eps_high is None else eps_high
    return ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).to(ratio.dtype)


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation = "sequence",
    constant: float | None = None,
    num_seqs: float | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) token loss to a scalar.

    * ``sequence``: mean over each sequence's tokens, then over sequences (GRPO as published);
    * ``token``: sum over all tokens / number of tokens (DAPO: long answers are not down-weighted);
    * ``constant``: sum / (B * constant) with a fixed constant, e.g. max completion length
      (Dr. GRPO: no length bias at all).

    When ``loss`` is one micro-batch of a larger batch, pass the whole batch's ``num_seqs`` (rows
    with at least one masked token) and ``num_tokens``: the micro-batch results then *sum* to the
    whole-batch value, so accumulated gradients equal the unsplit ones.
    """
    m = mask.to(loss.dtype)
    if mode == "sequence":
        per_seq = (loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        has = (m.sum(-1) > 0).to(loss.dtype)
        denom = num_seqs if num_seqs is not None else has.sum().clamp(min=1.0)
        return (per_seq * has).sum() / denom
    if mode == "token":
        denom = num_tokens if num_tokens is not None else m.sum().clamp(min=1.0)
        return (loss * m).sum() / denom
    if mode == "constant":
        if not constant or constant <= 0:
            raise ValueError("aggregation 'constant' needs a positive constant (e.g. max new tokens)")
        rows = num_seqs if num_seqs is not None else loss.shape[0]
        return (loss * m).sum() / (rows * constant)
    raise ValueError(f"unknown loss aggregation {mode!r}: expected 'sequence', 'token' or 'constant'")


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    next_nonterminal: torch.Tensor,
    episode_continues: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a (T, ...) rollout.

    For each step t: ``delta_t = r_t + gamma * next_nonterminal_t * V(s_{t+1}) - V(s_t)`` where
    ``next_values[t]`` is the value of the state reached after step t (for a truncated episode: the
    value of the final observation, so time limits bootstrap), ``next_nonterminal[t]`` is 0 when step
    t terminated the episode. ``episode_continues[t]`` is 0 when the episode ended at t for any reason
    (terminated or truncated), which stops the advantage recursion there:
    ``A_t = delta_t + gamma * lam * episode_continues_t * A_{t+1}``.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_nonterminal[t] * next_values[t] - values[t]
        last = delta + gamma * lam * episode_continues[t] * last
        adv[t] = last
    return adv, adv + values


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns over a (T, ...) rollout; ``dones[t]`` cuts the sum after step t."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * (1.0 - dones[t]) * running
        out[t] = running
    return out


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip: float | None = None,
) -> torch.Tensor:
    """Elementwise 0.5 * squared error; with ``clip``, PPO's pessimistic clipped variant
    ``0.5 * max((v - R)^2, (old_v + clip(v - old_v, -c, c) - R)^2)``."""
    unclipped = (values - returns) ** 2
    if clip is None or old_values is None:
        return 0.5 * unclipped
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum(unclipped, (v_clipped - returns) ** 2)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution over the last dim (numerically stable)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target] (NaN when the target is constant), as CleanRL logs."""
    var_y = target.var()
    if var_y == 0:
        return float("nan")
    return float(1.0 - (target - pred).var() / var_y)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob of ``targets`` (B, T) under ``logits`` (B, T, V), computed without materialising a
    full (B, T, V) log-softmax copy beyond what logsumexp needs."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False):
    """What every LM policy's ``forward_logprobs`` returns, from its full-sequence ``logits`` (B, T, V):
    the log-probs (B, T-1) of ``input_ids[:, 1:]`` and, when asked, the entropy per position (no grad)."""
    logits = logits[:, :-1]  # (B, T-1, V): position t scores token t+1
    lp = token_logprobs(logits, input_ids[:, 1:], temperature)
    if not with_entropy:
        return lp
    with torch.no_grad():
        ent = entropy_from_logits(logits / temperature if temperature != 1.0 else logits)
    return lp, ent


HEAD_CHUNK_ELEMENTS = 2**24  # logits alive at once in head_logprobs: 64 MB of fp32, whatever the vocabulary


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                  temperature: float = 1.0, with_entropy: bool = False, chunk_elements: int = HEAD_CHUNK_ELEMENTS):
    """Log-probs (N,) of ``targets`` (N,) under a linear LM head, at N chosen positions only.

    ``hidden`` (N, H) are the final hidden states at those positions, ``weight`` (V, H) and ``bias``
    (V,) | None the head. The logits are made ``chunk_elements // V`` positions at a time; when there
    is more than one chunk each is recomputed in the backward pass (activation checkpointing) instead
    of kept, so peak memory stays flat as the vocabulary or the batch grows. Returns ``lp`` or
    ``(lp, entropy)`` (entropy per position, no gradient), the same values as :func:`token_logprobs`
    and :func:`entropy_from_logits` on the full logits.
    """
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def piece(h, w, b, t):  # (n, H) -> (n,), (n,)
        logits = F.linear(h, w, b)  # (n, V)
        lp = token_logprobs(logits, t, temperature)
        if not with_entropy:
            return lp, None
        with torch.no_grad():
            ent = entropy_from_logits(logits / temperature if temperature != 1.0 else logits)
        return lp, ent

    N, V = hidden.shape[0], weight.shape[0]
    chunk = max(1, chunk_elements // V)
    if N <= chunk:
        lp, ent = piece(hidden, weight, bias, targets)
    else:
        grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        parts = [checkpoint(piece, hidden[s : s + chunk], weight, bias, targets[s : s + chunk], use_reentrant=False)
                 if grad else piece(hidden[s : s + chunk], weight, bias, targets[s : s + chunk])
                 for s in range(0, N, chunk)]
        lp = torch.cat([p[0] for p in parts])
        ent = torch.cat([p[1] for p in parts]) if with_entropy else None
    return (lp, ent) if with_entropy else lp


# ------------------------------------------------------------------------------------ Shapley values
# Shapley values of facts, and ProMed's Shapley information gain (SIG), as pure math.
#
# A *game* gives every set of players (facts) a value ``v(S)``; in ProMed ``v(S)`` is how strongly the
# facts in ``S`` point at the right diagnosis (the log-probability of the right answer given them).
# The Shapley value of fact ``i`` is its average marginal contribution over all orders in which the
# facts could be revealed::
#
#     phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))
#
# Two estimators, checked against each other in the tests:
#
# * :func:`exact_shapley` from the whole table of ``2**n`` values (a fact set is a bit mask: bit ``i``
#   set when fact ``i`` is in it) -- exact, for up to ~20 facts;
# * :func:`monte_carlo_shapley` from random permutations, as the paper: at least ``min_permutations``
#   (3), at most ``max_permutations`` (50), stopping once one more permutation moves no estimate by
#   ``tol`` (0.01) or more.
#
# Weights ``w = softmax(phi / T)`` (T = 2) turn the values into a distribution over the case's facts;
# the SIG of a question is the weight of the facts it reveals *that were not known before* (the
# released code credits a fact again when it is asked twice; we do not).


def popcount(masks: np.ndarray) -> np.ndarray:
    """Number of set bits of each (non-negative) integer mask, elementwise."""
    masks = np.asarray(masks, dtype=np.int64)
    out = np.zeros_like(masks)
    m = masks.copy()
    while np.any(m):
        out += m & 1
        m >>= 1
    return out


def exact_shapley(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values from a full value table.

    ``values``: (2**n,) with ``values[mask]`` = v(S) for the fact set whose bits are set in ``mask``.
    Returns (n,) values; they sum to ``values[-1] - values[0]`` (efficiency).
    """
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[0]
    n = size.bit_length() - 1
    if values.ndim != 1 or size != 1 << n:
        raise ValueError(f"exact_shapley needs a table of 2**n values (one per subset); got shape {values.shape}")
    masks = np.arange(size, dtype=np.int64)
    sizes = popcount(masks)
    # weight of a coalition of size s that player i joins: s! (n - s - 1)! / n!
    coef = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    phi = np.zeros(n)
    for i in range(n):
        bit = 1 << i
        without = masks[(masks & bit) == 0]  # (2**(n-1),)
        phi[i] = np.sum(coef[sizes[without]] * (values[without | bit] - values[without]))
    return phi


def monte_carlo_shapley(
    value_of_masks: Callable[[np.ndarray], np.ndarray],
    n: int,
    rng: np.random.Generator,
    min_permutations: int = 3,
    max_permutations: int = 50,
    tol: float = 0.01,
) -> tuple[np.ndarray, int]:
    """Shapley values estimated from random orders of the ``n`` players.

    ``value_of_masks``: maps an integer array of bit masks to their values (batched, so one call
    scores the ``n + 1`` prefixes of a permutation). Each permutation adds every player's marginal
    contribution at its place in the order; the estimate is their running mean. Stops after at
    least ``min_permutations`` once adding a permutation changed no estimate by ``tol`` or more, or
    after ``max_permutations``. Returns ``(phi, permutations used)``.
    """
    if n == 0:
        return np.zeros(0), 0
    if min_permutations < 1 or max_permutations < min_permutations:
        raise ValueError(f"need 1 <= min_permutations ({min_permutations}) <= max_permutations ({max_permutations})")
    total = np.zeros(n)
    phi = np.zeros(n)
    k = 0
    for k in range(1, max_permutations + 1):
        order = rng.permutation(n)
        prefixes = np.concatenate([[0], np.cumsum(1 << order.astype(np.int64))])  # (n+1,) masks
        vals = np.asarray(value_of_masks(prefixes), dtype=np.float64)
        total[order] += np.diff(vals)  # player order[j] joins prefix j
        new = total / k
        moved = np.max(np.abs(new - phi))
        phi = new
        if k >= min_permutations and moved < tol:
            break
    return phi, k


def shapley_weights(phi: np.ndarray, temperature: float = 2.0) -> np.ndarray:
    """``softmax(phi / T)``: the facts' share of the case's information (sums to 1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(phi, dtype=np.float64) / temperature
    if z.size == 0:
        return z
    z = np.exp(z - z.max())
    return z / z.sum()


def shapley_information_gain(weights: np.ndarray, revealed: Iterable[int], known: Iterable[int]) -> float:
    """SIG of one question: the summed weight of the facts in ``revealed`` that are not in ``known``
    (facts already visible or revealed by an earlier question earn nothing; each counts once)."""
    new = set(revealed) - set(known)
    return float(sum(weights[i] for i in new))
