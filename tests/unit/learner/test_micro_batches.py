"""Token-budget micro-batches: lengths -> groups (budget respected, every sequence once,
deterministic), balancing across ranks, trimming, and how micro-batch statistics combine."""

import random

import pytest
import torch

from rlhf_dist.experience import Experience
from rlhf_dist.learner.micro_batches import (
    MicroBatch,
    MicroBatchStats,
    MicroStats,
    balance_groups,
    fixed_groups,
    group_cost,
    padded_positions,
    plan_micro_batches,
    sequence_lengths,
    token_budget_groups,
)


def masks(lengths, prompt_cols, response_cols):
    """Left-padded prompt masks and right-padded response masks with these (prompt, response) lengths."""
    prompt = torch.zeros(len(lengths), prompt_cols)
    response = torch.zeros(len(lengths), response_cols)
    for row, (p, r) in enumerate(lengths):
        prompt[row, prompt_cols - p :] = 1
        response[row, :r] = 1
    return prompt, response


def test_sequence_lengths_read_left_padded_prompts_and_right_padded_responses():
    prompt, response = masks([(3, 2), (1, 5), (4, 0)], 4, 5)
    assert sequence_lengths(prompt, response) == [(3, 2), (1, 5), (4, 0)]
    # a hole inside a response (a masked token) does not shorten its span
    response[1, 2] = 0
    assert sequence_lengths(prompt, response)[1] == (1, 5)


def test_groups_hand_worked():
    # totals 10, 4, 9, 3, 8: longest first is 0 (10), 2 (9), 4 (8), 1 (4), 3 (3).
    lengths = [(6, 4), (2, 2), (5, 4), (1, 2), (4, 4)]
    # budget 20: {0, 2} costs 2 x (6 + 4) = 20; adding 4 would cost 30 -> new group {4, 1}:
    # 2 x (4 + 4) = 16; adding 3: 3 x 8 = 24 > 20 -> {3} alone.
    assert token_budget_groups(lengths, 20) == [[0, 2], [1, 4], [3]]
    # a budget below a sequence's own length: that sequence runs alone
    assert token_budget_groups(lengths, 5) == [[0], [2], [4], [1], [3]]
    # a large budget: one group
    assert token_budget_groups(lengths, 1000) == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("seed", range(20))
def test_groups_respect_the_budget_and_hold_every_sequence_once(seed):
    rng = random.Random(seed)
    lengths = [(rng.randint(1, 32), rng.randint(0, 16)) for _ in range(rng.randint(1, 40))]
    budget = rng.randint(10, 300)
    groups = token_budget_groups(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert g == sorted(g) and g
        assert group_cost(lengths, g) <= budget or len(g) == 1
    assert token_budget_groups(list(lengths), budget) == groups  # deterministic


def test_balance_splits_the_costliest_group_then_pads_with_empty_ones():
    lengths = [(4, 4), (4, 4), (4, 4), (1, 1)]
    groups = [[0, 1, 2], [3]]
    assert balance_groups(groups, 2, lengths) == groups
    assert balance_groups(groups, 3, lengths) == [[0], [1, 2], [3]]
    assert balance_groups(groups, 4, lengths) == [[0], [1], [2], [3]]
    assert balance_groups(groups, 6, lengths) == [[0], [1], [2], [3], [], []]
    with pytest.raises(ValueError, match="down to 1"):
        balance_groups(groups, 1, lengths)


def test_fixed_groups_are_consecutive_runs():
    assert fixed_groups(5, 2) == [[0, 1], [2, 3], [4]]


def test_plan_trims_each_group_and_agrees_on_the_count():
    prompt, response = masks([(2, 1), (5, 6), (1, 2), (5, 5)], 6, 7)
    asked = []

    def agree(count):
        asked.append(count)
        return count + 1  # another rank needs one more micro-batch

    plan = plan_micro_batches(prompt, response, micro_batch_size=2, token_budget=24, agree=agree)
    assert asked == [2]
    assert plan == [MicroBatch([1], 1, 6), MicroBatch([3], 1, 5), MicroBatch([0, 2], 4, 2)]
    # off: consecutive micro_batch_size rows, untrimmed, and no agreement needed
    assert plan_micro_batches(prompt, response, 2) == [MicroBatch([0, 1]), MicroBatch([2, 3])]


def _experience(lengths, prompt_cols=6, response_cols=7):
    prompt_mask, response_mask = masks(lengths, prompt_cols, response_cols)
    n = len(lengths)
    return Experience(
        prompt_ids=torch.arange(n * prompt_cols).view(n, prompt_cols), prompt_mask=prompt_mask,
        response_ids=torch.arange(n * response_cols).view(n, response_cols), response_mask=response_mask,
        rollout_logprobs=torch.randn(n, response_cols), advantages=torch.randn(n, response_cols),
    )


def test_take_cuts_common_padding_and_put_writes_back():
    exp = _experience([(2, 1), (5, 6), (1, 2)])
    part = MicroBatch([0, 2], 4, 2)
    mb = part.take(exp)
    assert mb.prompt_ids.tolist() == [[4, 5], [16, 17]] and mb.response_ids.tolist() == [[0, 1], [14, 15]]
    torch.testing.assert_close(mb.advantages, exp.advantages[[0, 2], :2])
    torch.testing.assert_close(part.cut(exp.rollout_logprobs), exp.rollout_logprobs[[0, 2], :2])
    out = torch.full((3, 7), 9.0)
    part.put(out, torch.ones(2, 2))
    assert out[0].tolist() == [1, 1] + [9] * 5 and out[1].tolist() == [9] * 7


def test_an_empty_micro_batch_is_a_one_token_stand_in_with_no_response_token():
    exp = _experience([(2, 1), (5, 6)])
    mb = MicroBatch([]).take(exp)
    assert mb.prompt_ids.shape == (1, 1) and mb.response_ids.shape == (1, 1)
    assert mb.response_mask.sum() == 0 and mb.prompt_mask.sum() == 1
    assert MicroBatch([]).cut(exp.advantages).shape == (1, 1)
    out = torch.zeros(2, 7)
    MicroBatch([]).put(out, torch.ones(1, 1))
    assert out.sum() == 0


def test_padded_positions():
    prompt, response = masks([(2, 1), (5, 6)], 5, 6)
    assert padded_positions(prompt, response) == (22 - 14, 22)


def test_stats_sum_losses_weight_means_by_tokens_and_take_maxima():
    stats = MicroBatchStats()
    stats.add(MicroStats({"policy/loss": 0.25}, {"policy/clip_frac": 0.5}, {"policy/ratio_max": 1.5}), tokens=3)
    stats.add(MicroStats({"policy/loss": 0.5}, {"policy/clip_frac": 0.0}, {"policy/ratio_max": 1.25}), tokens=1)
    stats.add(MicroStats({"policy/loss": 0.0}, {"policy/clip_frac": 0.0}, {"policy/ratio_max": 0.0}), tokens=0)  # stand-in
    assert stats.result() == {"policy/loss": 0.75, "policy/clip_frac": 0.375, "policy/ratio_max": 1.5}
    # over ranks: the caller sums the first vector (sums, weighted numerators, tokens) and takes the max of the second
    summed, maxed = stats.vectors()
    assert summed == [0.75, 1.5, 4.0] and maxed == [1.5]
    assert stats.result([1.0, 2.0, 8.0], [2.0]) == {"policy/loss": 1.0, "policy/clip_frac": 0.25, "policy/ratio_max": 2.0}


def test_a_name_is_reduced_as_its_group_says_whatever_it_is_called():
    """The reduction comes from the group a value is put in, not from its name: a loss named like a
    maximum still adds up, a mean named like a loss is still token-weighted."""
    stats = MicroBatchStats()
    stats.add(MicroStats(summed={"x_max": 1.0}, weighted={"policy/loss": 1.0}), tokens=1)
    stats.add(MicroStats(summed={"x_max": 2.0}, weighted={"policy/loss": 4.0}), tokens=3)
    assert stats.result() == {"x_max": 3.0, "policy/loss": 3.25}


def test_policy_and_critic_statistics_of_one_micro_batch_merge():
    merged = MicroStats({"policy/loss": 1.0}, {"policy/entropy": 2.0}) | MicroStats({"critic/value_loss": 3.0}, {"critic/clip_frac": 0.5})
    assert merged == MicroStats({"policy/loss": 1.0, "critic/value_loss": 3.0}, {"policy/entropy": 2.0, "critic/clip_frac": 0.5})


def test_a_budget_below_one_full_length_sequence_is_a_config_error():
    from rlhf_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="counts tokens, not sequences: set it to at least 48"):
        load_config(None, ["learner.max_tokens_per_micro_batch=8"])  # the default: 32 + 16 tokens
    assert load_config(None, ["learner.max_tokens_per_micro_batch=48"]).learner.max_tokens_per_micro_batch == 48
