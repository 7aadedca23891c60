"""The learner ranks as one (`LearnerGroup`): each call splits the batch into one shard per rank, calls
every rank at once, gathers the answers in order and reduces them. The driver's phases read
``self.learners.train(exp, kl_coef)`` and never see a shard, a handle or a remote call."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_dist.driver.remote_calls import RankGroup
from rlhf_dist.experience import Experience
from rlhf_dist.learner.train_stats import reduce_ranks


class LearnerGroup(RankGroup):
    def __init__(self, learners: list[Any]):
        super().__init__(learners, "learner")

    def logprobs(self, exp: Experience) -> torch.Tensor:
        """(B, T) log-probs of the sampled tokens under the learner's current weights."""
        return torch.cat(self.map(lambda rank, shard: rank.logprobs.remote(shard), exp.split(len(self))))

    def values(self, exp: Experience) -> torch.Tensor:
        """(B, T) critic values (PPO)."""
        return torch.cat(self.map(lambda rank, shard: rank.values.remote(shard), exp.split(len(self))))

    def train(self, exp: Experience, kl_coef: float) -> dict[str, float]:
        """One update on the batch; the step's training metrics, reduced over the ranks' `TrainStats`."""
        return reduce_ranks(self.map(lambda rank, shard: rank.train.remote(shard, kl_coef), exp.split(len(self))))
