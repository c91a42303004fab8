"""warmstart/functional.py against hand-computed values.

Sections are kept apart so that both learners' authors can add tests here: the vector-side
(PPO/PDPPO, issue 3) tests are the ``test_vector_*`` functions below.
"""

import math

import torch

from warmstart.functional import approx_kl, gae, kl_estimate, value_loss

# ------------------------------------------------------------------ vector side: GAE, value loss


def test_vector_gae_hand_computed_with_termination_and_truncation():
    # one env, 3 steps; gamma 0.9, lambda 0.5
    # step 0: r=1, V=0.5, next V=1.0 (continues)
    # step 1: r=2, V=1.0, truncated: bootstraps from V(final obs)=3.0 but stops the recursion
    # step 2: r=0, V=2.0, terminated: no bootstrap (next value 7.0 must be ignored)
    r = torch.tensor([[1.0], [2.0], [0.0]])
    v = torch.tensor([[0.5], [1.0], [2.0]])
    nv = torch.tensor([[1.0], [3.0], [7.0]])
    nonterm = torch.tensor([[1.0], [1.0], [0.0]])
    cont = torch.tensor([[1.0], [0.0], [0.0]])
    adv, ret = gae(r, v, nv, nonterm, cont, gamma=0.9, lam=0.5)
    d2 = 0.0 - 2.0  # terminated
    d1 = 2.0 + 0.9 * 3.0 - 1.0  # truncated: bootstrap 3.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2, a1 = d2, d1  # step 1 ends the episode: no carry from step 2
    a0 = d0 + 0.9 * 0.5 * a1
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, a2]))
    assert torch.allclose(ret, adv + v)


def test_vector_gae_lambda_one_is_discounted_return_minus_value():
    torch.manual_seed(0)
    T, N, g = 6, 3, 0.97
    r, v = torch.randn(T, N), torch.randn(T, N)
    nv = torch.cat([v[1:], torch.zeros(1, N)])
    last = torch.ones(T, N)
    last[-1] = 0.0  # the rollout ends in a termination
    adv, _ = gae(r, v, nv, last, last, gamma=g, lam=1.0)
    mc = torch.zeros(N)
    for t in reversed(range(T)):
        mc = r[t] + g * mc
        assert torch.allclose(adv[t], mc - v[t], atol=1e-5)


def test_vector_value_loss_clipped_is_pessimistic():
    v = torch.tensor([1.0, 0.0, 2.0])
    ret = torch.tensor([2.0, 1.0, 2.0])
    old = torch.tensor([0.0, 0.0, 1.0])
    plain = value_loss(v, ret)
    assert torch.allclose(plain, torch.tensor([0.5, 0.5, 0.0]))
    clipped = value_loss(v, ret, old, clip=0.2)
    # element 0: v moved 1.0 from old -> clipped v = 0.2, (0.2-2)^2 = 3.24 > (1-2)^2 = 1 -> 0.5*3.24
    # element 1: v did not move -> 0.5 * 1
    # element 2: clipped v = 1.2, (1.2-2)^2 = 0.64 > 0 -> 0.5 * 0.64
    assert torch.allclose(clipped, torch.tensor([1.62, 0.5, 0.32]))


def test_vector_approx_kl_matches_cleanrl_definition():
    # CleanRL: logratio = new - old; approx_kl = (exp(logratio) - 1) - logratio
    old = torch.tensor([-1.0, -0.5])
    new = torch.tensor([-0.8, -0.9])
    lr = new - old
    want = (lr.exp() - 1) - lr
    assert torch.allclose(approx_kl(new, old), want)  # the one approx_kl of every learner
    assert torch.allclose(kl_estimate(old, new, "k3"), want)
    assert math.isclose(float(approx_kl(old, old).sum()), 0.0)
