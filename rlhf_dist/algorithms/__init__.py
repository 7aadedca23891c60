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
from rlhf_dist.algorithms.offpolicy import (
    IS_LEVELS,
    IS_MODES,
    GroupSelection,
    ISStats,
    importance_weights,
    overlong_penalty,
    resolve_is_correction,
    select_groups,
    uniform_groups,
)

__all__ = [
    "IS_LEVELS",
    "IS_MODES",
    "KL_KINDS",
    "LOSS_AGGS",
    "AdaptiveKLController",
    "FixedKLController",
    "GroupSelection",
    "ISStats",
    "aggregate_loss",
    "bradley_terry_loss",
    "dpo_loss",
    "gae",
    "group_advantages",
    "importance_weights",
    "kl_estimate",
    "masked_fill_zero",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "overlong_penalty",
    "ppo_policy_loss",
    "resolve_is_correction",
    "rloo_advantages",
    "select_groups",
    "uniform_groups",
    "value_loss",
]
