"""`Learner`: one rank of the DeepSpeed world. Call parameter-touching methods on all ranks at once."""

from __future__ import annotations

import ray
import torch

from actors.shell import ComputeClock, building, computing
from rlhf_dist.config import RunConfig
from rlhf_dist.experience import Experience
from rlhf_dist.learner.rank import Learner as LearnerCore
from rlhf_dist.learner.train_stats import TrainStats
from rlhf_dist.models.reference import ReferenceModel, ReferenceSpec
from rlhf_dist.weight_sync.buckets import Bucket, WeightLayout
from rlhf_dist.weight_sync.group import free_port, node_ip
from rlhf_dist.weight_sync.transports import LearnerRoute


@ray.remote
class Learner(ComputeClock):
    def __init__(self, rank: int):
        self.rank = rank
        self.core: LearnerCore | None = None
        self.reference: ReferenceModel | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0's address and a free port, for the DeepSpeed world and the sync group."""
        return node_ip(), free_port()

    def setup(
        self, cfg: RunConfig, model_path: str, world_size: int, master_addr: str, master_port: int,
        critic_path: str | None = None, reference: ReferenceSpec | None = None,
    ) -> bool:
        """Join the world and build the engines; with ``reference`` (``placement.reference.colocate_with:
        learner_process``: no reference actors), also load the frozen reference beside the policy."""
        with building():
            self.core = LearnerCore(cfg, model_path, self.rank, world_size, master_addr, master_port, critic_path)
            if reference is not None:
                self.reference = ReferenceModel(reference)
        return True

    @computing
    def train(self, shard: Experience, kl_coef: float) -> TrainStats:
        return self.core.train(shard, kl_coef)

    @computing
    def values(self, shard: Experience) -> torch.Tensor:
        return self.core.values(shard)

    @computing
    def logprobs(self, shard: Experience) -> torch.Tensor:
        return self.core.logprobs(shard)

    @computing
    def reference_logprobs(self, shard: Experience) -> torch.Tensor:
        """(B, T) log pi_ref of the shard's sampled tokens; not a collective, so the ranks' shards may differ."""
        return self.reference.logprobs(shard)

    @computing
    def save_checkpoint(self, ckpt_dir: str) -> None:
        self.core.save_checkpoint(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> bool:
        self.core.load_checkpoint(ckpt_dir)
        return True

    def weight_layout(self, bucket_bytes: int) -> WeightLayout:
        return self.core.weight_layout(bucket_bytes)

    def sync_backend(self) -> str:
        """The weight-sync backend every member must use: this world's (nccl on GPU, gloo on CPU)."""
        return self.core.backend

    def init_weight_sync(self, route: LearnerRoute, generation: int) -> bool:
        return self.core.init_weight_sync(route, generation)

    @computing
    def broadcast_weights(self, buckets: list[Bucket], probe_ids: list[int]) -> tuple[list[int], list[float]]:
        return self.core.broadcast_weights(buckets, probe_ids)

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.core.probe_logprobs(token_ids)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.core.full_state_dict()

    def save_pretrained(self, out_dir: str, tokenizer_path: str) -> str | None:
        return self.core.save_pretrained(out_dir, tokenizer_path)
