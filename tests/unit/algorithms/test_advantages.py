"""GAE, GRPO and RLOO advantages: values worked out by hand, plus properties."""

import math

import torch

from rlhf_dist.algorithms import gae, group_advantages, rloo_advantages

NAN = float("nan")


def test_gae_hand_worked_gamma_lambda_one():
    # Reward 1 at the last token, V = 0.5 everywhere, gamma = lam = 1:
    # t=2: delta = 1 - 0.5 = 0.5, A = 0.5; t=1: delta = 0.5 - 0.5 = 0, A = 0 + 0.5 = 0.5; t=0 likewise.
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.5]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_hand_worked_discounted():
    # gamma = lam = 0.5, V = [1, 2, 3], r = [0, 0, 1]:
    # t=2: delta = 1 + 0 - 3 = -2, A2 = -2
    # t=1: delta = 0 + 0.5*3 - 2 = -0.5, A1 = -0.5 + 0.25*(-2) = -1
    # t=0: delta = 0 + 0.5*2 - 1 = 0, A0 = 0 + 0.25*(-1) = -0.25; returns = A + V.
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3), 0.5, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.25, -1.0, -2.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.75, 1.0, 1.0]]))


def test_gae_ignores_garbage_past_mask():
    # Mask [1, 1, 0]: the episode ends at t=1, so V after it counts as 0.
    # t=1: delta = 1 - 2 = -1, A1 = -1; t=0: delta = 0.5*2 - 1 = 0, A0 = 0.25*(-1) = -0.25.
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(torch.tensor([[0.0, 1.0, NAN]]), torch.tensor([[1.0, 2.0, math.inf]]), mask, 0.5, 0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.25, -1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.75, 1.0, 0.0]]))


def test_gae_garbage_values_change_nothing_random():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 6), torch.randn(4, 6)
    lengths = torch.tensor([6, 3, 1, 0])
    mask = (torch.arange(6)[None] < lengths[:, None]).float()
    clean = gae(torch.where(mask.bool(), rewards, 0), torch.where(mask.bool(), values, 0), mask, 0.9, 0.8)
    noisy = gae(torch.where(mask.bool(), rewards, NAN), torch.where(mask.bool(), values, 1e9), mask, 0.9, 0.8)
    for a, b in zip(clean, noisy):
        torch.testing.assert_close(a, b)
        assert torch.isfinite(b).all()


def test_group_advantages_hand_worked():
    # Group [1, 2, 3]: mean 2, sample std 1 -> [-1, 0, 1]. Group [10, 10, 10]: all equal -> 0.
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]), group_size=3, eps=1e-6)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    unnormalised = group_advantages(torch.tensor([1.0, 3.0, 0.0, 4.0]), group_size=2, normalize_std=False)
    torch.testing.assert_close(unnormalised, torch.tensor([-1.0, 1.0, -2.0, 2.0]))


def test_group_advantages_average_to_zero_per_group():
    torch.manual_seed(1)
    scores = torch.randn(8 * 5) * 3 + 7
    for normalize in (True, False):
        adv = group_advantages(scores, group_size=5, normalize_std=normalize).view(8, 5)
        torch.testing.assert_close(adv.mean(dim=1), torch.zeros(8), atol=1e-5, rtol=0)


def test_rloo_hand_worked_and_mean_zero():
    # [1, 2, 3]: 1 - (2+3)/2 = -1.5; 2 - (1+3)/2 = 0; 3 - (1+2)/2 = 1.5.
    torch.testing.assert_close(rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3), torch.tensor([-1.5, 0.0, 1.5]))
    adv = rloo_advantages(torch.randn(12), 4).view(3, 4)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)


def test_group_baselines_reject_bad_groups():
    import pytest

    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_advantages(torch.ones(4), group_size=1)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        rloo_advantages(torch.ones(4), group_size=3)
