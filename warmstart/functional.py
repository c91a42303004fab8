"""The shared math of every learner: one implementation each, used by token and vector learners.

All functions are pure tensor functions; masks are boolean or 0/1 tensors of the same shape as the
values they select. Shapes in comments: B = batch, T = time/tokens, G = group size.
"""

from __future__ import annotations

from typing import Literal

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
