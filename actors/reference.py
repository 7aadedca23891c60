"""`ReferenceActor`: the frozen initial policy, answering log-prob queries."""

from __future__ import annotations

import ray
import torch

from actors.shell import ComputeClock, building, computing
from rlhf_dist.experience import Experience
from rlhf_dist.models.reference import ReferenceModel, ReferenceSpec


@ray.remote
class ReferenceActor(ComputeClock):
    def __init__(self, spec: ReferenceSpec):
        with building():
            self.model = ReferenceModel(spec)

    @computing
    def reference_logprobs(self, exp: Experience) -> torch.Tensor:
        """The same call as `Learner.reference_logprobs` (a CPU run's learner ranks may hold the reference)."""
        return self.model.logprobs(exp)
