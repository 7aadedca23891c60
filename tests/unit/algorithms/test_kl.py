"""KL estimators and controllers: hand-worked values and properties."""

import math

import pytest
import torch

from rlhf_dist.algorithms import AdaptiveKLController, FixedKLController, kl_estimate


def test_estimators_hand_worked():
    # logp = -1, ref = -2: r = ref - logp = -1.
    # k1 = logp - ref = 1; k2 = r^2/2 = 0.5; k3 = e^r - r - 1 = e^-1 + 1 - 1 = 0.36788.
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-1), rel=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_zero_when_policy_equals_reference(kind):
    logp = torch.randn(3, 7) - 2
    assert torch.equal(kl_estimate(logp, logp.clone(), kind), torch.zeros(3, 7))


def test_k2_and_k3_are_nonnegative():
    torch.manual_seed(0)
    logp = torch.randn(64, 32) * 3
    ref = logp + torch.randn(64, 32) * torch.logspace(-9, 1, 32)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()


def test_k1_and_k3_are_unbiased_for_known_kl():
    # Two categorical distributions: sample from p, average the estimators, compare with the exact KL.
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True)
    logp, logq = p.log()[samples][None], q.log()[samples][None]
    assert kl_estimate(logp, logq, "k1").mean().item() == pytest.approx(exact, rel=0.03)
    assert kl_estimate(logp, logq, "k3").mean().item() == pytest.approx(exact, rel=0.03)


def test_mask_zeroes_garbage():
    logp = torch.tensor([[-1.0, float("nan")]])
    ref = torch.tensor([[-2.0, float("inf")]])
    out = kl_estimate(logp, ref, "k3", mask=torch.tensor([[1.0, 0.0]]))
    assert out[0, 1].item() == 0.0 and out[0, 0].item() == pytest.approx(math.exp(-1))


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_adaptive_controller_hand_worked():
    # target 6, horizon 10000, 64 sequences. KL 12: e = clamp(12/6 - 1) = clamp(1) = 0.2,
    # coef = 0.1 * (1 + 0.2 * 64 / 10000) = 0.100128. KL 3: e = clamp(-0.5) = -0.2 -> 0.1 * 0.99872.
    up = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    up.update(12.0, n_steps=64)
    assert up.value == pytest.approx(0.100128)
    down = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    down.update(3.0, n_steps=64)
    assert down.value == pytest.approx(0.099872)
    # Inside the band the error is proportional: KL 6.6 -> e = 0.1 -> 0.1 * (1 + 0.1 * 100/1000).
    mid = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    mid.update(6.6, n_steps=100)
    assert mid.value == pytest.approx(0.101)


def test_fixed_controller_and_state_round_trip():
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 64)
    assert fixed.value == 0.05
    ctl = AdaptiveKLController(0.2, target=1.0, horizon=10)
    ctl.update(5.0, 10)
    restored = AdaptiveKLController(0.2, target=1.0, horizon=10)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value != 0.2
