"""The advantages phase per algorithm, on hand-made experience."""

import pytest
import torch

from rlhf_dist.algorithms import group_advantages, masked_mean
from rlhf_dist.config.schema import AlgorithmConfig, KLConfig
from rlhf_dist.driver.shaping import compute_advantages, last_token_scores
from rlhf_dist.experience import Experience


def make_exp(scores, lengths, width=4, logp=-1.0, ref=-1.5, values=None):
    batch = len(scores)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).float()
    return Experience(
        prompt_ids=torch.ones(batch, 2, dtype=torch.long),
        prompt_mask=torch.ones(batch, 2),
        response_ids=torch.ones(batch, width, dtype=torch.long),
        response_mask=mask,
        rollout_logprobs=torch.full((batch, width), logp),
        ref_logprobs=torch.full((batch, width), ref),
        values=values,
        scores=torch.tensor(scores),
    )


def test_score_sits_at_the_last_response_token():
    out = last_token_scores(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))


def test_grpo_broadcasts_group_advantages_over_response_tokens():
    exp = make_exp([1.0, 3.0, 0.0, 4.0], [4, 2, 3, 1])
    algo = AlgorithmConfig(name="grpo", kl=KLConfig(mode="loss", kind="k3"))
    stats = compute_advantages(exp, algo, kl_coef=0.1, group_size=2)
    expected = group_advantages(exp.scores, 2)
    for row, length in enumerate([4, 2, 3, 1]):
        torch.testing.assert_close(exp.advantages[row, :length], expected[row].expand(length))
        assert (exp.advantages[row, length:] == 0).all()
    # k3 with logp - ref = 0.5: e^-0.5 + 0.5 - 1 = 0.10653 per token; per sequence summed, then averaged.
    per_token = torch.exp(torch.tensor(-0.5)) + 0.5 - 1
    assert stats["kl/mean"] == pytest.approx(float(per_token * (4 + 2 + 3 + 1) / 4), rel=1e-5)


def test_grpo_with_kl_in_the_reward_gives_equal_reward_groups_zero_advantage():
    """Without the guard, a group whose rewards are all 1.0 would see only its KL penalties, and
    the group std (~1e-3 here) would blow that noise up to advantages of about +-0.7."""
    exp = make_exp([1.0, 1.0, 0.0, 2.0], [4, 2, 3, 1])
    exp.rollout_logprobs[0] -= 0.01  # KL differs a little within the flat group
    algo = AlgorithmConfig(name="grpo", kl=KLConfig(mode="reward", kind="k1"))
    compute_advantages(exp, algo, kl_coef=0.1, group_size=2)
    assert (exp.advantages[:2] == 0).all()
    assert exp.advantages[2, 0] < 0 < exp.advantages[3, 0]  # the group with a spread keeps its signal


def test_ppo_kl_penalty_enters_every_token_and_score_the_last():
    # One sequence of 2 tokens, V = 0, gamma = lam = 1, k1 = logp - ref = 0.5 per token, coef 0.2:
    # rewards = [-0.1, 1 - 0.1]; A_1 = 0.9, A_0 = -0.1 + 0.9 = 0.8 (no whitening).
    exp = make_exp([1.0], [2], width=3, values=torch.zeros(1, 3))
    algo = AlgorithmConfig(name="ppo", gamma=1.0, lam=1.0, whiten_advantages=False, kl=KLConfig(kind="k1", mode="reward"))
    compute_advantages(exp, algo, kl_coef=0.2, group_size=1)
    torch.testing.assert_close(exp.token_rewards, torch.tensor([[-0.1, 0.9, 0.0]]))
    torch.testing.assert_close(exp.advantages, torch.tensor([[0.8, 0.9, 0.0]]))
    torch.testing.assert_close(exp.returns, torch.tensor([[0.8, 0.9, 0.0]]))


def test_reinforce_pp_whitens_returns_over_the_batch():
    exp = make_exp([1.0, 0.0, 2.0], [3, 2, 1])
    algo = AlgorithmConfig(name="reinforce_pp", kl=KLConfig(kind="k2", mode="reward"))
    compute_advantages(exp, algo, kl_coef=0.1, group_size=1)
    mask = exp.response_mask
    assert abs(float(masked_mean(exp.advantages, mask))) < 1e-5
    assert float(masked_mean(exp.advantages**2, mask)) == pytest.approx(1.0, abs=1e-3)


def test_rloo_without_kl_penalty_in_loss_mode():
    exp = make_exp([1.0, 2.0, 3.0], [1, 1, 1], width=1)
    algo = AlgorithmConfig(name="rloo", whiten_advantages=False, kl=KLConfig(kind="k3", mode="loss"))
    compute_advantages(exp, algo, kl_coef=5.0, group_size=3)
    torch.testing.assert_close(exp.advantages[:, 0], torch.tensor([-1.5, 0.0, 1.5]))
