"""`RewardScorer`: scores (prompt, response) pairs with the configured reward components."""

from __future__ import annotations

from typing import Any

import ray

from actors.shell import ComputeClock, building, computing
from rlhf_dist.config.schema import RewardConfig
from rlhf_dist.rewards import CompositeReward, RewardResult
from rlhf_dist.rewards.functions import Extras


@ray.remote
class RewardScorer(ComputeClock):
    def __init__(self, cfg: RewardConfig):
        with building():
            self.reward = CompositeReward(cfg)

    @computing
    def score(
        self, prompts: list[str], responses: list[str], columns: dict[str, list[Any]] | None = None,
        extras: Extras | None = None,
    ) -> RewardResult:
        """Rewards of B samples; ``columns`` maps each dataset column to its B values (row order);
        ``extras``: the responses' token ids and the step, for Python rewards that name them."""
        return self.reward.score(prompts, responses, columns, extras)
