"""`RolloutWorker`: a Ray actor that owns one inference engine (vLLM, or transformers), and in a
multi-turn run the player of its trajectories."""

from __future__ import annotations

import ray

from actors.shell import ComputeClock, building, computing
from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.rollout.engines import make_engine
from rlhf_dist.rollout.multi_turn import MultiTurnSpec, TrajectoryPlayer
from rlhf_dist.rollout.requests import Request, Sample
from rlhf_dist.rollout.spec import EngineSpec
from rlhf_dist.weight_sync.buckets import WeightLayout
from rlhf_dist.weight_sync.controller import SyncReceipt
from rlhf_dist.weight_sync.transports import GeneratorRoute


@ray.remote
class RolloutWorker(ComputeClock):
    def __init__(self, spec: EngineSpec, multi_turn: MultiTurnSpec | None = None):
        with building():
            self.engine = make_engine(spec)
            self.player = TrajectoryPlayer(multi_turn, self.engine.tokenizer) if multi_turn is not None else None

    def ready(self) -> bool:
        return True

    @computing
    def generate(self, requests: list[Request], sampling: SamplingConfig, step: int = 0) -> list[Sample]:
        """One sample per request; in a multi-turn run, each request's whole trajectory (``step`` seeds
        the envs)."""
        if self.player is not None:
            return self.player.play(requests, sampling, step, self.engine.generate)
        return self.engine.generate(requests, sampling)

    def sleep(self) -> bool:
        """Colocated runs: free the engine's GPU memory while the learners train (no-op on CPU)."""
        self.engine.sleep()
        return True

    def wake_up(self) -> bool:
        self.engine.wake_up()
        return True

    def init_weight_sync(self, route: GeneratorRoute, generation: int) -> bool:
        self.engine.init_weight_sync(route, generation)
        return True

    @computing
    def receive_weights(self, layout: WeightLayout, probe_ids: list[int]) -> SyncReceipt:
        """Receive and load a sync; returns what arrived and the probe log-probs after loading."""
        sums, nbytes = self.engine.receive_weights(layout)
        return SyncReceipt(sums, nbytes, self.engine.probe_logprobs(probe_ids))

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.engine.probe_logprobs(token_ids)
