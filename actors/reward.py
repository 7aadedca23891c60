"""`RewardScorer`: scores (prompt, response) pairs with the configured reward components."""

from __future__ import annotations

import ray

from actors.common import ComputeClock, computing
from rlhf_dist.config.schema import RewardConfig
from rlhf_dist.rewards import CompositeReward, RewardResult


@ray.remote
class RewardScorer(ComputeClock):
    def __init__(self, cfg: RewardConfig):
        import torch

        torch.set_num_threads(1)
        self.reward = CompositeReward(cfg)

    @computing
    def score(self, prompts: list[str], responses: list[str]) -> RewardResult:
        return self.reward.score(prompts, responses)
