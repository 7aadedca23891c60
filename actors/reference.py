"""`ReferenceActor`: the frozen initial policy, answering log-prob queries."""

from __future__ import annotations

import ray
import torch

from actors.shell import ComputeClock, computing
from rlhf_dist.config import RunConfig
from rlhf_dist.experience import Experience
from rlhf_dist.models.reference import ReferenceModel


@ray.remote
class ReferenceActor(ComputeClock):
    def __init__(self, model_path: str, cfg: RunConfig):
        self.model = ReferenceModel(model_path, cfg)

    @computing
    def logprobs(self, exp: Experience) -> torch.Tensor:
        return self.model.logprobs(exp)
