"""The advantages phase: from scores, KL and values to per-token advantages, per algorithm.

Pure tensor code over an `Experience` (no Ray); the driver calls `compute_advantages` once per step.
"""

from __future__ import annotations

import torch

from rlhf_dist.algorithms import (
    gae,
    group_advantages,
    kl_estimate,
    masked_fill_zero,
    masked_mean,
    masked_whiten,
    rloo_advantages,
    uniform_groups,
)
from rlhf_dist.config.schema import AlgorithmConfig
from rlhf_dist.experience import Experience


def last_token_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) with each sequence's score at its last masked token (its last response token; in a
    multi-turn batch, its last model token), 0 elsewhere."""
    columns = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    last = torch.where(mask != 0, columns, 0).amax(dim=-1) if mask.shape[1] else mask.new_zeros(mask.shape[0]).long()
    out = torch.zeros_like(mask, dtype=scores.dtype)
    has_tokens = last > 0
    rows = torch.arange(mask.shape[0])[has_tokens]
    out[rows, last[has_tokens] - 1] = scores[has_tokens]
    return out


def compute_advantages(exp: Experience, algo: AlgorithmConfig, kl_coef: float, group_size: int) -> dict[str, float]:
    """Fill ``exp.token_rewards``, ``exp.advantages`` (and ``exp.returns`` for PPO) in place.

    The KL to the reference enters as a per-token reward penalty when ``algo.kl.mode == "reward"``
    (CONTRACTS: the score sits at the last response token, penalties at every token); in ``loss``
    mode the learner adds it to the loss instead. The policy's log-probs are the learner's when the
    driver computed them (async), else the rollout engine's. Returns KL statistics: ``kl/mean`` is the batch
    mean of each sequence's summed KL (nats per sequence) with the configured estimator.
    """
    mask = exp.action_mask
    # Async: the learner's own (proximal) log-probs, not the stale ones of the engine that sampled.
    policy_logp = exp.old_logprobs if exp.old_logprobs is not None else exp.rollout_logprobs
    kl = kl_estimate(policy_logp, exp.ref_logprobs, algo.kl.kind, mask)
    seq_kl = kl.sum(-1)
    penalty = kl_coef * kl if algo.kl.mode == "reward" else torch.zeros_like(kl)
    scores = exp.scores.float()
    if algo.name == "ppo":
        exp.token_rewards = _token_rewards(exp, scores, mask) - penalty
        advantages, exp.returns = gae(exp.token_rewards, exp.values, mask, algo.gamma, algo.lam)
        exp.advantages = masked_whiten(advantages, mask) if algo.whiten_advantages else advantages
    elif algo.name == "reinforce_pp":
        # REINFORCE++: KL-penalised token rewards, gamma = 1 returns, batch-whitened advantages.
        exp.token_rewards = _token_rewards(exp, scores, mask) - penalty
        returns, _ = gae(exp.token_rewards, torch.zeros_like(mask), mask, gamma=1.0, lam=1.0)
        exp.advantages = masked_whiten(returns, mask)
    else:
        sequence_scores = scores - (penalty.sum(-1) if algo.kl.mode == "reward" else 0.0)
        if algo.name == "grpo":
            seq_adv = group_advantages(sequence_scores, group_size, normalize_std=algo.normalize_group_std)
            # A group whose raw rewards are equal carries no signal: with KL in the reward, its spread
            # is KL noise, which the group std would blow up to unit scale. It gets zero advantage.
            flat = uniform_groups(scores, group_size).repeat_interleave(group_size)
            seq_adv = seq_adv.masked_fill(flat, 0.0)
        else:
            seq_adv = rloo_advantages(sequence_scores, group_size)
        exp.token_rewards = last_token_scores(sequence_scores, mask)
        exp.advantages = masked_fill_zero(seq_adv[:, None].expand_as(mask).clone(), mask)
        if algo.whiten_advantages and algo.name == "rloo":
            exp.advantages = masked_whiten(exp.advantages, mask, shift_mean=False)
    return {
        "kl/mean": float(seq_kl.mean()),
        "kl/token_mean": float(masked_mean(kl, mask)),
        "advantages/mean": float(masked_mean(exp.advantages, mask)),
        "advantages/abs_mean": float(masked_mean(exp.advantages.abs(), mask)),
    }


def _token_rewards(exp: Experience, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) rewards per token before the KL: the score at the last model token; in a multi-turn
    batch each env turn reward at its turn's last model token, and the rest of the score (the reward
    components) at the trajectory's last model token."""
    if exp.turn_rewards is None:
        return last_token_scores(scores, mask)
    turns = exp.turn_rewards.float()
    return last_token_scores(scores - turns.sum(-1), mask) + turns
