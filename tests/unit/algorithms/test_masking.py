"""Masked reductions: hand-worked values and NaN safety."""

import math

import pytest
import torch

from rlhf_dist.algorithms import masked_mean, masked_whiten

NAN = float("nan")


def test_masked_mean_hand_worked_and_nan_safe():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, math.inf, NAN]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_of_empty_row_is_zero():
    out = masked_mean(torch.tensor([[NAN, NAN]]), torch.zeros(1, 2), dim=1)
    assert out.item() == 0.0


def test_masked_whiten_hand_worked():
    # [1, 2, 3]: mean 2, biased var 2/3 -> (x - 2) / sqrt(2/3) = [-1.2247, 0, 1.2247].
    x = torch.tensor([[1.0, 2.0, 3.0, NAN]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    s = math.sqrt(1.5)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[-s, 0.0, s, 0.0]]))
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), torch.tensor([[2 - s, 2.0, 2 + s, 0.0]]))


def test_masked_whiten_properties():
    torch.manual_seed(0)
    x = torch.randn(6, 9) * 5 + 3
    mask = (torch.rand(6, 9) > 0.4).float()
    w = masked_whiten(torch.where(mask.bool(), x, NAN), mask)
    assert masked_mean(w, mask).abs().item() < 1e-5
    assert masked_mean(w**2, mask).item() == pytest.approx(1.0, abs=1e-4)
