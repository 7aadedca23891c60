"""Policy, value and preference losses.

Token losses take ``(B, T)`` tensors with a 0/1 response ``mask``. Each returns ``(loss, stats)``
where ``stats`` maps a name to a detached 0-d tensor, for logging.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rlhf_dist.algorithms.masking import masked_fill_zero, masked_mean

LossAgg = Literal["token-mean", "seq-mean-token-mean"]
LOSS_AGGS: tuple[str, ...] = ("token-mean", "seq-mean-token-mean")


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    - ``token-mean``: ``sum(l * m) / num_tokens``. ``num_tokens`` defaults to ``mask.sum()``; pass
      the count of response tokens in the whole training batch (all micro-batches, all
      data-parallel ranks) so that accumulation and data parallelism give the loss of one big batch.
    - ``seq-mean-token-mean``: the mean over sequences of each sequence's token mean. Sequences with
      no response token are dropped. ``num_seqs`` plays the role of ``num_tokens`` for sequences.
    """
    if agg == "token-mean":
        total = masked_fill_zero(per_token, mask).sum()
        denom = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens)
        return total / denom.to(total).clamp_min(1e-8)
    if agg == "seq-mean-token-mean":
        per_seq = masked_mean(per_token, mask, dim=-1)
        has_tokens = mask.sum(dim=-1) > 0
        total = torch.where(has_tokens, per_seq, torch.zeros_like(per_seq)).sum()
        denom = has_tokens.sum() if num_seqs is None else torch.as_tensor(num_seqs)
        return total / denom.to(total).clamp_min(1e-8)
    raise ValueError(f"unknown loss aggregation {agg!r}; expected one of {LOSS_AGGS}")


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017), with asymmetric clip bounds (DAPO).

    ``ratio = exp(logp - old_logp)``; per token ``-min(ratio * A, clamp(ratio, 1 - clip_low,
    1 + clip_high) * A)``. The gradient is zero exactly where the clipped branch is the minimum
    (A > 0 and ratio > 1 + clip_high, or A < 0 and ratio < 1 - clip_low).

    Decoupled PPO (Hilton et al. 2021): off-policy, ``old_logp`` is the proximal policy's (the
    learner's at the start of the step) and ``weights`` (from
    :func:`~rlhf_dist.algorithms.offpolicy.importance_weights`) multiply each token's surrogate
    to correct for the behaviour policy that sampled it.

    Args:
        logp: (B, T) log-probs of the sampled tokens under the policy being trained.
        old_logp: (B, T) log-probs under the policy that sampled them, or the proximal policy.
        advantages: (B, T).
        mask: (B, T) 0/1 response-token mask.
        weights: (B, T) importance weights, treated as constants; None = all 1.
    Returns:
        (loss, stats) with stats ``clip_frac``, ``approx_kl`` (KL(old || new), k3 estimator),
        ``ratio_mean`` and ``ratio_max``.
    """
    log_ratio = masked_fill_zero(logp - old_logp, mask)
    adv = masked_fill_zero(advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights.detach()  # garbage outside the mask is dropped by the aggregation
    loss = aggregate_loss(per_token, mask, agg, num_tokens, num_seqs)
    with torch.no_grad():
        clip_active = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
        stats = {
            "clip_frac": masked_mean(clip_active.to(ratio.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": masked_fill_zero(ratio, mask).max(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``0.5 * max((v - R)^2, (v_clip - R)^2)``, ``v_clip = old + clamp(v - old, ±clip)``.

    Args:
        values: (B, T) current critic values; old_values: (B, T) values at rollout time;
        returns: (B, T) targets; mask: (B, T) 0/1.
    Returns:
        (loss, stats) with stats ``clip_frac`` (share of tokens where the clipped term is larger)
        and ``values_mean``.
    """
    values = masked_fill_zero(values, mask)
    old_values = masked_fill_zero(old_values, mask)
    returns = masked_fill_zero(returns, mask)
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    per_token = 0.5 * torch.maximum(loss_unclipped, loss_clipped)
    loss = aggregate_loss(per_token, mask, agg, num_tokens, num_seqs)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask),
            "values_mean": masked_mean(values, mask),
        }
    return loss, stats


def dpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct preference optimisation (Rafailov et al. 2023).

    ``mean(-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))))``.

    Args:
        pi_chosen, pi_rejected, ref_chosen, ref_rejected: (B,) summed response log-probs under the
            policy and the frozen reference.
        beta: inverse temperature of the implicit reward.
    Returns:
        (loss, stats) with ``reward_accuracy``, ``reward_margin``, ``chosen_reward`` and
        ``rejected_reward`` (implicit rewards ``beta * (pi - ref)``, batch means).
    """
    chosen_reward = beta * (pi_chosen - ref_chosen)
    rejected_reward = beta * (pi_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {
            "reward_accuracy": (margin > 0).float().mean(),
            "reward_margin": margin.mean(),
            "chosen_reward": chosen_reward.mean(),
            "rejected_reward": rejected_reward.mean(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pairwise reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022): ``mean(-log sigmoid(r_c - r_r))``.

    Args:
        r_chosen, r_rejected: (B,) scalar rewards of the preferred and the other response.
    Returns:
        (loss, stats) with ``accuracy`` (share of pairs with r_c > r_r) and ``margin``.
    """
    margin = r_chosen - r_rejected
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {"accuracy": (margin > 0).float().mean(), "margin": margin.mean()}
    return loss, {k: v.detach() for k, v in stats.items()}
