"""Off-policy correction, overlong punishment and dynamic sampling: values worked out by hand."""

import math

import pytest
import torch

from rlhf_dist.algorithms import (
    ISStats,
    group_advantages,
    importance_weights,
    overlong_penalty,
    ppo_policy_loss,
    resolve_is_correction,
    select_groups,
    uniform_groups,
)

NAN, INF = float("nan"), float("inf")
E, SQRT_E = math.e, math.exp(0.5)


def _token_case():
    """log-ratios 1, -1, 0.5 on three response tokens; the fourth is padding holding garbage."""
    proximal = torch.tensor([[0.0, -2.0, -0.5, NAN]])
    behaviour = torch.tensor([[-1.0, -1.0, -1.0, -INF]])
    return proximal, behaviour, torch.tensor([[1.0, 1.0, 1.0, 0.0]])


def _values(weights):
    return pytest.approx(weights.flatten().tolist(), abs=1e-6)


def test_tis_token_level_truncates_at_the_cap():
    # ratios e, 1/e, sqrt(e) ~ 1.649; cap 2: e is truncated to 2, the others kept.
    weights, stats = importance_weights(*_token_case(), mode="tis", cap=2.0, level="token")
    assert weights.flatten().tolist() == _values(torch.tensor([2.0, 1 / E, SQRT_E, 0.0]))
    assert stats.weight_mean == pytest.approx((2.0 + 1 / E + SQRT_E) / 3)
    assert stats.weight_max == pytest.approx(2.0)
    assert stats.clipped_frac == pytest.approx(1 / 3)


def test_mis_token_level_masks_outside_the_band():
    # band [1/2, 2]: e is above, 1/e ~ 0.368 below, sqrt(e) inside.
    weights, stats = importance_weights(*_token_case(), mode="mis", cap=2.0, level="token")
    assert weights.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert stats.weight_mean == pytest.approx(1 / 3)
    assert stats.weight_max == 1.0
    assert stats.clipped_frac == pytest.approx(2 / 3)


def test_a_larger_cap_keeps_more():
    # cap 3 > e: nothing truncated by tis; mis keeps e and sqrt(e) (1/e ~ 0.368 > 1/3).
    weights, stats = importance_weights(*_token_case(), mode="tis", cap=3.0)
    assert weights.flatten().tolist() == _values(torch.tensor([E, 1 / E, SQRT_E, 0.0]))
    assert stats.clipped_frac == 0.0
    weights, stats = importance_weights(*_token_case(), mode="mis", cap=3.0)
    assert weights.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]


def _sequence_case():
    """Sequence 0: log-ratios 1.0 and 0.2 (mean 0.6), then padding. Sequence 1: 1, 1, 1 (mean 1)."""
    behaviour = torch.zeros(2, 3)
    proximal = torch.tensor([[1.0, 0.2, INF], [1.0, 1.0, 1.0]])
    return proximal, behaviour, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_tis_sequence_level_uses_the_geometric_mean():
    # Sequence 0: exp(0.6) ~ 1.822 < 2 on both tokens (token level would truncate its first
    # token's e to 2). Sequence 1: e > 2, truncated to 2 on all three tokens.
    weights, stats = importance_weights(*_sequence_case(), mode="tis", cap=2.0, level="sequence")
    g = math.exp(0.6)
    assert weights.flatten().tolist() == _values(torch.tensor([g, g, 0.0, 2.0, 2.0, 2.0]))
    assert stats.weight_mean == pytest.approx((2 * g + 3 * 2.0) / 5)  # over the 5 tokens
    assert stats.weight_max == pytest.approx(2.0)
    assert stats.clipped_frac == pytest.approx(3 / 5)


def test_mis_sequence_level_drops_whole_sequences():
    weights, stats = importance_weights(*_sequence_case(), mode="mis", cap=2.0, level="sequence")
    assert weights.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert stats.weight_mean == pytest.approx(2 / 5)
    assert stats.clipped_frac == pytest.approx(3 / 5)


def test_none_gives_the_mask_and_no_clipping():
    weights, stats = importance_weights(*_token_case(), mode="none", cap=2.0)
    assert weights.tolist() == [[1.0, 1.0, 1.0, 0.0]]
    assert (stats.weight_mean, stats.weight_max, stats.clipped_frac) == (1.0, 1.0, 0.0)


def test_ratios_at_the_cap_and_its_inverse_count_as_inside():
    proximal = torch.tensor([[math.log(2.0), -math.log(2.0)]])
    weights, stats = importance_weights(proximal, torch.zeros(1, 2), torch.ones(1, 2), mode="mis", cap=2.0)
    assert weights.tolist() == [[1.0, 1.0]] and stats.clipped_frac == 0.0
    weights, stats = importance_weights(proximal, torch.zeros(1, 2), torch.ones(1, 2), mode="tis", cap=2.0)
    assert weights.flatten().tolist() == _values(torch.tensor([2.0, 0.5])) and stats.clipped_frac == 0.0


def test_huge_log_ratios_stay_finite():
    proximal = torch.tensor([[1000.0, -1000.0], [500.0, 0.0]])
    behaviour = torch.zeros(2, 2)
    for level in ("token", "sequence"):
        tis, _ = importance_weights(proximal, behaviour, torch.ones(2, 2), "tis", 2.0, level)
        mis, _ = importance_weights(proximal, behaviour, torch.ones(2, 2), "mis", 2.0, level)
        assert torch.isfinite(tis).all() and torch.isfinite(mis).all()
    tis, _ = importance_weights(proximal, behaviour, torch.ones(2, 2), "tis", 2.0, "token")
    assert tis[0, 0].item() == 2.0 and tis[0, 1].item() == pytest.approx(math.exp(-20))


def test_weights_are_detached_float32_and_an_empty_mask_gives_zeros():
    proximal = torch.tensor([[0.5, 0.1]], dtype=torch.bfloat16, requires_grad=True)
    weights, stats = importance_weights(proximal, torch.zeros(1, 2), torch.zeros(1, 2), "tis", 2.0)
    assert not weights.requires_grad and weights.dtype == torch.float32
    assert weights.tolist() == [[0.0, 0.0]]
    assert stats == ISStats(weight_sum=0.0, clipped=0.0, tokens=0.0, weight_max=0.0)
    assert stats.metrics() == {"is/weight_mean": 0.0, "is/clipped_frac": 0.0, "is/weight_max": 0.0}


def test_importance_stats_are_sums_and_counts_that_add_over_ranks():
    """Two ranks' shards together give the statistics of one batch holding both (token-weighted)."""
    proximal, behaviour, mask = _token_case()
    other_mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # only the clipped token (ratio e > 2)
    _, whole = importance_weights(proximal.repeat(2, 1), behaviour.repeat(2, 1), torch.cat([mask, other_mask]), "tis", 2.0)
    _, first = importance_weights(proximal, behaviour, mask, "tis", 2.0)
    _, second = importance_weights(proximal, behaviour, other_mask, "tis", 2.0)
    assert (first.tokens, second.tokens, first.clipped, second.clipped) == (3.0, 1.0, 1.0, 1.0)
    added = first + second
    assert added.tokens == whole.tokens == first.tokens + second.tokens
    assert added.weight_mean == pytest.approx(whole.weight_mean)
    assert added.clipped_frac == pytest.approx(whole.clipped_frac)
    assert added.weight_max == whole.weight_max


def test_bad_mode_level_or_cap_is_refused():
    args = _token_case()
    with pytest.raises(ValueError, match="mode 'is'"):
        importance_weights(*args, mode="is")
    with pytest.raises(ValueError, match="level 'batch'"):
        importance_weights(*args, level="batch")
    with pytest.raises(ValueError, match="cap must be > 1, got 1.0"):
        importance_weights(*args, cap=1.0)


def test_decoupled_loss_is_plain_ppo_when_behaviour_is_proximal():
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    proximal = torch.randn(2, 4)
    logp = (proximal + 0.3 * torch.randn(2, 4)).requires_grad_()
    adv = torch.randn(2, 4)
    weights, stats = importance_weights(proximal, proximal.clone(), mask, "tis", 2.0)
    assert weights.tolist() == mask.tolist() and stats.clipped_frac == 0.0
    plain, _ = ppo_policy_loss(logp, proximal, adv, mask)
    (plain_grad,) = torch.autograd.grad(plain, logp)
    decoupled, _ = ppo_policy_loss(logp, proximal, adv, mask, weights=weights)
    (decoupled_grad,) = torch.autograd.grad(decoupled, logp)
    assert torch.equal(plain, decoupled) and torch.equal(plain_grad, decoupled_grad)


def test_auto_correction_is_tis_only_under_async():
    assert resolve_is_correction("auto", 0) == "none"
    assert resolve_is_correction("auto", 1) == "tis" and resolve_is_correction("auto", 3) == "tis"
    assert resolve_is_correction("mis", 0) == "mis" and resolve_is_correction("none", 2) == "none"
    with pytest.raises(ValueError, match="unknown is_correction 'yes'"):
        resolve_is_correction("yes", 1)


def test_overlong_penalty_ramps_over_the_buffer():
    # max 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 at 10.
    lengths = torch.tensor([3, 6, 7, 8, 9, 10])
    assert overlong_penalty(lengths, 10, 4, 1.0).tolist() == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0]
    assert overlong_penalty(lengths, 10, 4, 2.0).tolist() == [0.0, 0.0, -0.5, -1.0, -1.5, -2.0]
    assert overlong_penalty(torch.tensor([12.0]), 10, 4, 1.0).tolist() == [-1.0]  # never past -penalty


def test_overlong_penalty_without_a_buffer_is_a_step_at_the_limit():
    assert overlong_penalty(torch.tensor([1, 9, 10]), 10, 0, 0.5).tolist() == [0.0, 0.0, -0.5]
    with pytest.raises(ValueError, match="buffer must be in \\[0, max_new_tokens=10\\], got 11"):
        overlong_penalty(torch.tensor([1]), 10, 11, 1.0)


def test_uniform_groups_within_tolerance():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5 + 1e-7, 0.5, 0.2, 0.2, 0.2 + 1e-3])
    assert uniform_groups(scores, 3).tolist() == [True, False, True, False]
    assert uniform_groups(scores, 3, tol=1e-2).tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="12 scores do not split into groups of 5"):
        uniform_groups(scores, 5)


def _rounds(*flags):
    return [torch.tensor(f) for f in flags]


def test_round_zero_with_enough_informative_groups():
    sel = select_groups(_rounds([False, False, False]), target=3)
    assert sel.slots == [(0, 0), (0, 1), (0, 2)]
    assert (sel.informative, sel.filtered, sel.complete) == (3, 0, True)
    assert sel.filler_rows(4) == slice(12, None)  # no rows: nothing to zero


def test_a_second_round_fills_the_gaps_in_generation_order():
    first = select_groups(_rounds([False, True, False]), target=3)
    assert not first.complete and first.filtered == 1
    sel = select_groups(_rounds([False, True, False], [True, False, False]), target=3)
    assert sel.slots == [(0, 0), (0, 2), (1, 1)]  # (1, 2) is informative too, but not needed
    assert (sel.informative, sel.filtered, sel.complete) == (3, 2, True)


def test_cap_hit_fills_with_uniform_groups_last():
    sel = select_groups(_rounds([True, False, True], [True, True, True]), target=3)
    assert sel.slots == [(0, 1), (0, 0), (0, 2)]
    assert (sel.informative, sel.filtered, sel.complete) == (1, 5, False)
    assert sel.filler_rows(2) == slice(2, None)  # rows 2..5: the two filler groups of 2 samples
    with pytest.raises(ValueError, match="2 groups generated, fewer than the 3 slots"):
        select_groups(_rounds([True, False]), target=3)


def test_filler_advantages_need_zeroing_once_scores_are_kl_shaped():
    # Equal raw scores give GRPO advantage 0, but a KL penalty (kl.mode=reward) makes them differ.
    raw = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert uniform_groups(raw, 4).tolist() == [True]
    assert group_advantages(raw, 4).abs().max().item() == 0.0
    shaped = raw - 0.05 * torch.tensor([0.1, 0.3, 0.2, 0.4])
    assert group_advantages(shaped, 4).abs().max().item() > 0.5
