"""Shapley values of facts, and ProMed's Shapley information gain (SIG), as pure math.

A *game* gives every set of players (facts) a value ``v(S)``; in ProMed ``v(S)`` is how strongly the
facts in ``S`` point at the right diagnosis (the log-probability of the right answer given them).
The Shapley value of fact ``i`` is its average marginal contribution over all orders in which the
facts could be revealed::

    phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))

Two estimators, checked against each other in the tests:

* :func:`exact_shapley` from the whole table of ``2**n`` values (a fact set is a bit mask: bit ``i``
  set when fact ``i`` is in it) -- exact, for up to ~20 facts;
* :func:`monte_carlo_shapley` from random permutations, as the paper: at least ``min_permutations``
  (3), at most ``max_permutations`` (50), stopping once one more permutation moves no estimate by
  ``tol`` (0.01) or more.

Weights ``w = softmax(phi / T)`` (T = 2) turn the values into a distribution over the case's facts;
the SIG of a question is the weight of the facts it reveals *that were not known before* (the
released code credits a fact again when it is asked twice; we do not).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np


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
