"""The pure algorithm core: tensor functions with documented shapes, no Ray, vLLM or DeepSpeed.

Token tensors are ``(B, T)`` (batch, response length) with a 0/1 float mask over response
tokens (right padding). Values outside the mask may be garbage (NaN, inf) and never leak in.
"""

from rlhf_dist.algorithms.advantages import gae, group_advantages, rloo_advantages
from rlhf_dist.algorithms.kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
)
from rlhf_dist.algorithms.losses import (
    LOSS_AGGS,
    aggregate_loss,
    bradley_terry_loss,
    dpo_loss,
    ppo_policy_loss,
    value_loss,
)
from rlhf_dist.algorithms.masking import (
    masked_fill_zero,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

__all__ = [
    "KL_KINDS",
    "LOSS_AGGS",
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "gae",
    "group_advantages",
    "kl_estimate",
    "masked_fill_zero",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "rloo_advantages",
    "value_loss",
]
