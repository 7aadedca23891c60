"""Temperature scaling and ECE on synthetic reward margins with a known calibration."""

import pytest
import torch

from rlhf_dist.stages.calibration import expected_calibration_error, fit_temperature


def synthetic_margins(n=20000, overconfidence=4.0, seed=0):
    """True preference logits z; the label agrees with z's sign with probability sigmoid(|z|).
    The model reports margins = overconfidence * z (signed by the label), i.e. T* = overconfidence."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g) * 1.5
    chosen_is_first = torch.rand(n, generator=g) < torch.sigmoid(z)
    return torch.where(chosen_is_first, z, -z) * overconfidence


def test_fit_recovers_the_planted_temperature():
    assert fit_temperature(synthetic_margins(overconfidence=4.0)) == pytest.approx(4.0, rel=0.1)
    assert fit_temperature(synthetic_margins(overconfidence=0.5)) == pytest.approx(0.5, rel=0.1)


def test_temperature_scaling_lowers_ece_on_a_separate_split():
    fit_split, measure_split = synthetic_margins(seed=1), synthetic_margins(seed=2)
    t = fit_temperature(fit_split)
    before = expected_calibration_error(measure_split)
    after = expected_calibration_error(measure_split, t)
    assert before > 0.1 and after < 0.02


def test_ece_of_a_perfectly_confident_correct_model_is_small():
    assert expected_calibration_error(torch.full((100,), 50.0)) == pytest.approx(0.0, abs=1e-6)
    # All wrong at confidence ~1: ECE ~1.
    assert expected_calibration_error(torch.full((100,), -50.0)) == pytest.approx(1.0, abs=1e-6)
