"""Policy, value, DPO and Bradley-Terry losses: hand-worked values, gradients, masking."""

import math

import pytest
import torch

from rlhf_dist.algorithms import aggregate_loss, bradley_terry_loss, dpo_loss, ppo_policy_loss, value_loss

NAN = float("nan")


def _one_token_loss(log_ratio: float, advantage: float):
    logp = torch.tensor([[log_ratio]], requires_grad=True)
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1))
    loss.backward()
    return loss.item(), logp.grad.item(), stats


def test_ppo_clipped_branch_when_ratio_high_and_advantage_positive():
    # ratio = e ~ 2.718 > 1.2 and A = 1: min(e*1, 1.2*1) = 1.2, so loss = -1.2 and no gradient.
    loss, grad, stats = _one_token_loss(1.0, 1.0)
    assert loss == pytest.approx(-1.2)
    assert grad == 0.0
    assert stats["clip_frac"].item() == 1.0


def test_ppo_unclipped_branch_when_ratio_high_and_advantage_negative():
    # ratio = e, A = -1: min(-e, -1.2) = -e, loss = e; d(-ratio*A)/dlogp = ratio = e.
    loss, grad, stats = _one_token_loss(1.0, -1.0)
    assert loss == pytest.approx(math.e)
    assert grad == pytest.approx(math.e)
    assert stats["clip_frac"].item() == 0.0


def test_ppo_gradient_flows_when_ratio_low_and_advantage_positive():
    # ratio = 1/e ~ 0.368 < 0.8, A = 1: min(0.368, 0.8) = 0.368 (unclipped), gradient -ratio.
    loss, grad, _ = _one_token_loss(-1.0, 1.0)
    assert loss == pytest.approx(-math.exp(-1))
    assert grad == pytest.approx(-math.exp(-1))


def test_ppo_clipped_branch_when_ratio_low_and_advantage_negative():
    # ratio = 1/e, A = -1: min(-0.368, -0.8) = -0.8 (clipped), loss 0.8, no gradient.
    loss, grad, stats = _one_token_loss(-1.0, -1.0)
    assert loss == pytest.approx(0.8)
    assert grad == 0.0
    assert stats["clip_frac"].item() == 1.0


def test_ppo_asymmetric_clip_bounds():
    # clip_high = 0.28 (DAPO's clip-higher): ratio e, A = 1 -> loss -1.28.
    loss, _ = ppo_policy_loss(torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.28)


def test_ppo_at_ratio_one_is_minus_mean_advantage_and_kl_zero():
    adv = torch.tensor([[1.0, 2.0, 3.0]])
    logp = torch.full((1, 3), -1.5)
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, torch.ones(1, 3))
    assert loss.item() == pytest.approx(-2.0)
    assert stats["approx_kl"].item() == 0.0 and stats["ratio_mean"].item() == 1.0


def test_ppo_garbage_past_mask_changes_nothing():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logp, old, adv = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    garbage = lambda x: torch.where(mask.bool(), x, NAN)  # noqa: E731
    clean_logp = logp.clone().requires_grad_()
    noisy_logp = garbage(logp).requires_grad_()
    clean, _ = ppo_policy_loss(clean_logp, old, adv, mask)
    noisy, _ = ppo_policy_loss(noisy_logp, garbage(old), torch.where(mask.bool(), adv, math.inf), mask)
    clean.backward()
    noisy.backward()
    torch.testing.assert_close(clean, noisy)
    torch.testing.assert_close(clean_logp.grad, noisy_logp.grad)
    assert torch.isfinite(noisy_logp.grad).all()


def test_ppo_importance_weights_scale_each_token_before_aggregation():
    # Tokens: ratio 1 with A = 1, w = 0.5 -> -0.5; ratio 1 with A = 2, w = 2 -> -4; ratio e with
    # A = 1 (clipped to 1.2), w = 0.5 -> -0.6; a padding token with a NaN weight. Token mean over
    # 3 tokens: -5.1 / 3 = -1.7. Gradients: -A * w * ratio / 3 where unclipped, 0 where clipped.
    logp = torch.tensor([[0.0, 0.0, 1.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 2.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights = torch.tensor([[0.5, 2.0, 0.5, NAN]])
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 4), adv, mask, weights=weights)
    loss.backward()
    assert loss.item() == pytest.approx(-1.7)
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5 / 3, -4.0 / 3, 0.0, 0.0])
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)  # the stats ignore the weights


def test_ppo_weights_of_one_or_none_are_bit_identical():
    torch.manual_seed(0)
    logp, old, adv = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    plain, _ = ppo_policy_loss(logp, old, adv, mask)
    assert torch.equal(plain, ppo_policy_loss(logp, old, adv, mask, weights=None)[0])
    assert torch.equal(plain, ppo_policy_loss(logp, old, adv, mask, weights=torch.ones(2, 3))[0])


def test_aggregation_hand_worked():
    # Seq 1 tokens [1, 3], seq 2 token [5] (second masked): token-mean = 9/3 = 3;
    # seq-mean-token-mean = mean(2, 5) = 3.5. An empty third sequence is dropped.
    per_token = torch.tensor([[1.0, 3.0], [5.0, NAN], [NAN, NAN]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert aggregate_loss(per_token, mask, "token-mean").item() == pytest.approx(3.0)
    assert aggregate_loss(per_token, mask, "seq-mean-token-mean").item() == pytest.approx(3.5)


def test_token_mean_with_global_count_matches_one_big_batch():
    torch.manual_seed(0)
    per_token = torch.randn(8, 5)
    mask = (torch.rand(8, 5) > 0.3).float()
    full = aggregate_loss(per_token, mask, "token-mean")
    total = mask.sum()
    parts = sum(
        aggregate_loss(per_token[i : i + 2], mask[i : i + 2], "token-mean", num_tokens=total) for i in range(0, 8, 2)
    )
    torch.testing.assert_close(parts, full)
    seqs = (mask.sum(-1) > 0).sum()
    full_seq = aggregate_loss(per_token, mask, "seq-mean-token-mean")
    parts_seq = sum(
        aggregate_loss(per_token[i : i + 4], mask[i : i + 4], "seq-mean-token-mean", num_seqs=seqs) for i in (0, 4)
    )
    torch.testing.assert_close(parts_seq, full_seq)


def test_value_loss_hand_worked():
    # v = 1.5, old = 1.0, R = 2.0, clip 0.2: v_clip = 1.2; (1.5-2)^2 = 0.25, (1.2-2)^2 = 0.64 -> 0.5*0.64.
    loss, stats = value_loss(torch.tensor([[1.5]]), torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(0.32)
    assert stats["clip_frac"].item() == 1.0
    # Inside the clip range both terms agree: v = 1.1 -> 0.5 * 0.81.
    loss, stats = value_loss(torch.tensor([[1.1]]), torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(0.405)
    assert stats["clip_frac"].item() == 0.0


def test_value_loss_ignores_garbage():
    mask = torch.tensor([[1.0, 0.0]])
    loss, _ = value_loss(
        torch.tensor([[1.5, NAN]]), torch.tensor([[1.0, math.inf]]), torch.tensor([[2.0, NAN]]), mask
    )
    assert loss.item() == pytest.approx(0.32)


def test_dpo_hand_worked():
    # (pi_c - ref_c) - (pi_r - ref_r) = 0.5 - (-0.5) = 1; beta 0.5 -> -log sigmoid(0.5) = log(1 + e^-0.5).
    loss, stats = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)))
    assert stats["reward_accuracy"].item() == 1.0
    assert stats["reward_margin"].item() == pytest.approx(0.5)
    assert stats["chosen_reward"].item() == pytest.approx(0.25)


def test_dpo_at_reference_is_log_two():
    x = torch.randn(4)
    loss, stats = dpo_loss(x, x - 1, x, x - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert stats["reward_accuracy"].item() == 0.0


def test_bradley_terry_hand_worked():
    # -log sigmoid(2) = log(1 + e^-2); a tie costs log 2. Mean over the two pairs; accuracy 1/2.
    loss, stats = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log(2)) / 2)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == pytest.approx(1.0)
