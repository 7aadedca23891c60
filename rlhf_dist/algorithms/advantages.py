"""Advantage estimators: GAE for PPO, group baselines for GRPO and RLOO."""

from __future__ import annotations

import torch

from rlhf_dist.algorithms.masking import masked_fill_zero


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    The value after the last response token is 0 (the episode ends there):
    ``delta_t = r_t + gamma * m_{t+1} * V_{t+1} - V_t`` and
    ``A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}``; ``returns = A + V``.

    The recursion runs over the masked tokens only: a multi-turn mask has gaps (env, tool and
    template tokens), which are skipped, so that "next" is the policy's next action. The masked
    tokens of each row are moved to its front (in order), the recursion runs there, and the results
    go back to their places; a right-padded mask without gaps stays where it is.

    Args:
        rewards: (B, T) per-token rewards (score at the last response token plus KL penalties).
        values: (B, T) critic values V(s_t).
        mask: (B, T) 0/1 mask of the tokens the policy sampled.
        gamma: discount; lam: GAE lambda.
    Returns:
        (advantages, returns), both (B, T) and 0 where the mask is 0.
    """
    order = torch.sort((mask == 0).to(torch.int8), dim=1, stable=True).indices  # masked tokens first, in order
    advantages, returns = _gae_packed(rewards.gather(1, order), values.gather(1, order), mask.gather(1, order),
                                      gamma, lam)
    return advantages.new_zeros(advantages.shape).scatter_(1, order, advantages), \
        returns.new_zeros(returns.shape).scatter_(1, order, returns)


def _gae_packed(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`gae` over a mask whose ones lead each row (right padded, no gaps)."""
    rewards = masked_fill_zero(rewards, mask)
    values = masked_fill_zero(values, mask)
    mask = mask.to(values.dtype)
    batch, length = rewards.shape
    zero = torch.zeros(batch, dtype=values.dtype, device=values.device)
    next_value, next_advantage, next_mask = zero, zero, zero
    advantages = torch.zeros_like(values)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_mask * next_value - values[:, t]
        advantage = delta + gamma * lam * next_mask * next_advantage
        advantages[:, t] = advantage
        next_value, next_advantage, next_mask = values[:, t], advantage, mask[:, t]
    advantages = masked_fill_zero(advantages, mask)
    returns = masked_fill_zero(advantages + values, mask)
    return advantages, returns


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(
            f"{scores.numel()} scores do not split into groups of {group_size}; "
            "the batch must hold whole groups of consecutive samples of one prompt"
        )
    return scores.view(-1, group_size)


def group_advantages(
    scores: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, DeepSeekMath).

    Args:
        scores: (B,) sequence scores; rows ``[k*g, (k+1)*g)`` are the g samples of one prompt.
        group_size: g >= 2.
        normalize_std: divide by the group's sample standard deviation (+ eps).
    Returns:
        (B,) ``s - group_mean`` (divided by ``group_std + eps`` when ``normalize_std``).
    """
    grouped = _grouped(scores, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centered = centered / (grouped.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centered.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out baseline (Ahmadian et al. 2024): ``s_i - mean_{j != i} s_j``.

    Args:
        scores: (B,), consecutive groups of ``group_size`` as in :func:`group_advantages`.
    Returns:
        (B,) advantages.
    """
    grouped = _grouped(scores, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)
