"""The proximal log-probs of one training step, and what is measured against them.

The PPO ratio and the importance weights compare the policy being trained with the *proximal*
policy: the learner's weights as the step began. When the step is a single optimizer update over
the whole shard (on-policy, ``learner.epochs=1``, one mini-batch per rank), the proximal log-probs
are the training pass's own, detached: the policy has not moved yet when each micro-batch runs its
forward. A separate no-grad pass over the shard would compute the same numbers (up to the rounding
of a different batch shape) at the price of one more forward per step; TRL skips it alike. Otherwise
(several updates, or proximal log-probs the driver computed under ``async_steps``) they are one pass
over the shard before training, as before.

`StepTally` adds up, either way, the learner-vs-engine log-prob mismatch over the sampled tokens and
the importance weights' statistics, so the step reports the same metrics in both cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_dist.algorithms import ISStats, importance_weights
from rlhf_dist.experience import Experience


def from_training_pass(shard: Experience, epochs: int, per_rank_mini: int) -> bool:
    """Whether this step's proximal log-probs can be the training forward's own: one update over the shard."""
    return shard.old_logprobs is None and epochs == 1 and per_rank_mini >= shard.batch_size


@dataclass
class StepTally:
    """The mismatch (``|learner - engine|`` over the sampled tokens) and the importance statistics."""

    mode: str  # algorithm.is_correction, resolved: none | tis | mis
    cap: float
    level: str
    diff_sum: float = 0.0
    diff_max: float = 0.0
    importance: ISStats = field(default_factory=lambda: ISStats(0.0, 0.0, 0.0, 0.0))

    def add(self, proximal: torch.Tensor, exp: Experience) -> torch.Tensor | None:
        """Count ``exp``'s tokens against its proximal log-probs ``proximal`` (B, T); returns its
        importance weights (None when the correction is off)."""
        proximal = proximal.detach()
        mask = exp.action_mask.to(proximal.device)
        diff = torch.where(mask.bool(), (proximal - exp.rollout_logprobs.to(proximal.device)).abs(), 0.0)
        self.diff_sum += float(diff.sum())
        self.diff_max = max(self.diff_max, float(diff.max()) if diff.numel() else 0.0)
        if self.mode == "none":
            return None
        weights, stats = importance_weights(proximal, exp.rollout_logprobs.to(proximal.device),
                                            exp.loss_mask.to(proximal.device), self.mode, self.cap, self.level)
        self.importance = self.importance + stats
        return weights
