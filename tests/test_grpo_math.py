"""The shared policy-gradient math (warmstart/functional.py) against hand-computed values."""

import math

import pytest
import torch

from warmstart.functional import (
    aggregate_loss,
    clip_fraction,
    clipped_surrogate,
    group_advantages,
    group_has_signal,
    kl_estimate,
    masked_mean,
    token_logprobs,
)


def test_group_advantages_group_scale():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    a = group_advantages(r, g, "group", eps=0.0)
    # group 0: mean 0.5, sample std sqrt(1/3) -> +-0.5/0.57735 = +-0.8660
    s = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(a[:4], torch.tensor([s, -s, -s, s]), atol=1e-5)
    # group 1: all equal -> 0 (std 0 guarded by eps; with eps=0 the centred value 0/0 must not be used)
    a1 = group_advantages(r, g, "group")
    assert torch.allclose(a1[4:], torch.zeros(2))


def test_group_advantages_none_and_batch():
    r = torch.tensor([3.0, 1.0, 2.0, 2.0])
    g = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(group_advantages(r, g, "none"), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    std = r.std()  # 0.8165
    assert torch.allclose(group_advantages(r, g, "batch", eps=0.0), torch.tensor([1.0, -1.0, 0.0, 0.0]) / std)
    with pytest.raises(ValueError):
        group_advantages(r, g, "bogus")


def test_group_has_signal():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    g = torch.tensor([0, 0, 1, 1])
    assert group_has_signal(r, g).tolist() == [False, False, True, True]


@pytest.mark.parametrize("adv,eps_high,want", [
    # symmetric clip (PPO): r=1.5,A=+1 -> min(1.5, 1.2) = 1.2 (clipped); r=0.5,A=+1 -> min(0.5, 0.8) = 0.5;
    # r=1.1,A=-2 -> min(-2.2, -2.2) = -2.2; r=0.7,A=-1 -> min(-0.7, -0.8) = -0.8 (clipped)
    ([1.0, 1.0, -2.0, -1.0], None, [-1.2, -0.5, 2.2, 0.8]),
    # clip-higher (DAPO): the upper bound 1.3 -> min(1.5, 1.3) = 1.3
    ([1.0, 1.0, -1.0, -1.0], 0.3, [-1.3, -0.5, 1.1, 0.8]),
])
def test_clipped_surrogate_hand_values(adv, eps_high, want):
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    loss, ratio, clipped = clipped_surrogate(logp, old, torch.tensor(adv), eps_low=0.2, eps_high=eps_high)
    assert torch.allclose(loss, torch.tensor(want), atol=1e-6)
    assert clipped.tolist() == [True, False, False, True]
    assert torch.allclose(ratio, torch.tensor([1.5, 0.5, 1.1, 0.7]), atol=1e-6)
    # clipfrac (ratio outside the band) differs from clip_active (clipped branch taken): r=0.5 with A>0
    frac = clip_fraction(ratio, 0.2, eps_high)
    assert frac.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_clipped_surrogate_gradient_vanishes_when_clipped():
    logp = torch.log(torch.tensor([1.5, 1.0])).requires_grad_()
    loss, _, _ = clipped_surrogate(logp, torch.zeros(2), torch.tensor([1.0, 1.0]), 0.2)
    loss.sum().backward()
    assert logp.grad[0] == 0.0  # clipped branch: no gradient
    assert torch.isclose(logp.grad[1], torch.tensor(-1.0))  # d(-r A)/dlogp = -r A = -1


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    l = math.log(0.25) - math.log(0.5)  # log(ref/pi) = -log 2
    assert torch.isclose(kl_estimate(logp, ref, "k1"), torch.tensor([-l]))
    assert torch.isclose(kl_estimate(logp, ref, "k2"), torch.tensor([0.5 * l * l]))
    assert torch.isclose(kl_estimate(logp, ref, "k3"), torch.tensor([math.exp(l) - l - 1]))
    assert kl_estimate(ref, ref, "k3").item() == 0.0


def test_k3_is_unbiased_for_kl():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = (p * (p / q).log()).sum()
    x = torch.multinomial(p, 200000, replacement=True)
    est = kl_estimate(p.log()[x], q.log()[x], "k3").mean()
    assert abs(est - exact) < 0.01


def test_aggregate_loss_modes():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    # sequence: mean(1, 4) = 2.5; token: (4 + 4) / 5 = 1.6; constant 8: 8 / (2 * 8) = 0.5
    assert aggregate_loss(loss, mask, "sequence").item() == pytest.approx(2.5)
    assert aggregate_loss(loss, mask, "token").item() == pytest.approx(1.6)
    assert aggregate_loss(loss, mask, "constant", 8).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        aggregate_loss(loss, mask, "constant")


def test_masked_mean_and_token_logprobs():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert masked_mean(x, torch.tensor([True, False, True])).item() == 2.0
    assert masked_mean(x, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    assert torch.allclose(token_logprobs(logits, torch.tensor([[1]])), torch.tensor([[math.log(0.75)]]))
