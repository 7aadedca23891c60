"""`ReferenceActor`: the frozen initial policy, answering log-prob queries."""

from __future__ import annotations

import ray
import torch

from actors.shell import ComputeClock, computing
from rlhf_dist.experience import Experience
from rlhf_dist.models.reference import ReferenceModel, ReferenceSpec


@ray.remote
class ReferenceActor(ComputeClock):
    def __init__(self, spec: ReferenceSpec):
        self.model = ReferenceModel(spec)

    @computing
    def logprobs(self, exp: Experience) -> torch.Tensor:
        return self.model.logprobs(exp)
