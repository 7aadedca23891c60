"""`StageWorker`: one rank of an SFT, reward-model or DPO DeepSpeed world."""

from __future__ import annotations

import ray

from actors.shell import ComputeClock, building, computing
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.stages.trainer import StageTrainer
from rlhf_dist.weight_sync.group import free_port, node_ip


@ray.remote
class StageWorker(ComputeClock):
    def __init__(self, rank: int):
        self.rank = rank
        self.trainer: StageTrainer | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        return node_ip(), free_port()

    def setup(self, kind: str, cfg: StageConfig, model_path: str, pad_id: int, world_size: int, addr: str, port: int) -> bool:
        with building():
            self.trainer = StageTrainer(kind, cfg, model_path, pad_id, self.rank, world_size, addr, port)
        return True

    def reference_logprobs(self, pairs: list) -> list[tuple[float, float]]:
        return self.trainer.reference_logprobs(pairs)

    @computing
    def train_epoch(self, examples: list, ref: list | None = None) -> dict[str, float]:
        return self.trainer.train_epoch(examples, ref)

    @computing
    def evaluate(self, examples: list, ref: list | None = None) -> dict:
        return self.trainer.evaluate(examples, ref)

    def score_responses(self, examples: list) -> list[float]:
        return self.trainer.score_responses(examples)

    def save(self, out_dir: str, tokenizer_path: str) -> str | None:
        return self.trainer.save(out_dir, tokenizer_path)
