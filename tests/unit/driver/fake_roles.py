"""In-process roles for driving the real `Driver` without Ray: each fake answers like its actor,
deterministically, and records the calls it gets in one shared list (``calls``), so a test can read
the order of a step's phases. `handle(obj)` makes a plain object look like an actor handle:
``handle(obj).generate.remote(...)`` runs ``obj.generate(...)`` at once, and `gather` passes the
answer through (it is not an ``ObjectRef``)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rlhf_dist.data import Prompt
from rlhf_dist.driver.remote_calls import Roles
from rlhf_dist.learner.train_stats import TrainStats
from rlhf_dist.rewards import RewardResult
from rlhf_dist.rollout.requests import Sample
from rlhf_dist.weight_sync.buckets import WeightLayout
from rlhf_dist.weight_sync.controller import SyncReceipt

PROBE = [0.5, -1.0]  # every fake policy's log-probs on the probe: the sync's probe check passes
CHECKSUMS = [7, 11]  # what the learner sends and each generator receives


class _Handle:
    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self._obj, name))


def handle(obj) -> _Handle:
    return _Handle(obj)


class _Actor:
    def __init__(self, name: str, calls: list[str]):
        self.name, self.calls = name, calls

    def pop_intervals(self) -> list[tuple[float, float]]:
        return []

    def cuda_device(self) -> None:
        return None

    def ready(self) -> bool:
        return True


class FakeGenerator(_Actor):
    """Response of prompt i, sample s: ``2 + (i + s) % 3`` tokens of id ``10 + i``, log-prob -0.5 each."""

    def generate(self, requests, sampling, step=0) -> list[Sample]:
        self.calls.append("generate")
        out = []
        for r in requests:
            length = 2 + (r.prompt_index + r.sample_index) % 3
            ids = [10 + r.prompt_index] * length
            out.append(Sample(r.prompt_index, r.sample_index, ids, [-0.5] * length, f"p{r.prompt_index}s{r.sample_index}",
                              truncated=length == sampling.max_new_tokens))
        return out

    def sleep(self) -> bool:
        self.calls.append(f"{self.name}.sleep")
        return True

    def wake_up(self) -> bool:
        self.calls.append(f"{self.name}.wake_up")
        return True

    def init_weight_sync(self, route, generation) -> bool:
        return True

    def receive_weights(self, layout: WeightLayout, probe_ids: list[int]) -> SyncReceipt:
        self.calls.append(f"{self.name}.receive")
        return SyncReceipt(list(CHECKSUMS), 1024, list(PROBE))


class FakeScorer(_Actor):
    """Reward = the response's sample index (so groups are never uniform), gold = half of it."""

    def score(self, prompts, responses, columns=None, extras=None) -> RewardResult:
        self.calls.append("score")
        total = torch.tensor([float(r.rsplit("s", 1)[1]) for r in responses])
        return RewardResult(total=total, components={"sample": total}, gold=total / 2)


class FakeReference(_Actor):
    def reference_logprobs(self, exp) -> torch.Tensor:
        self.calls.append("reference")
        return torch.full(exp.response_ids.shape, -0.7)


class FakeLearner(_Actor):
    def reference_logprobs(self, shard) -> torch.Tensor:
        self.calls.append(f"{self.name}.reference")
        return torch.full(shard.response_ids.shape, -0.7)

    def logprobs(self, shard) -> torch.Tensor:
        self.calls.append(f"{self.name}.logprobs")
        return torch.full(shard.response_ids.shape, -0.5)

    def values(self, shard) -> torch.Tensor:
        self.calls.append(f"{self.name}.values")
        return torch.zeros(shard.response_ids.shape)

    def train(self, shard, kl_coef: float) -> TrainStats:
        self.calls.append(f"{self.name}.train")
        tokens = float(shard.response_mask.sum())
        return TrainStats(means={"policy/loss": float(shard.batch_size), "train/nonfinite_loss": 0.0},
                          response_tokens=tokens, logprob_abs_diff_sum=0.01 * tokens, logprob_abs_diff_max=0.01)

    def init_weight_sync(self, route, generation) -> bool:
        return True

    def weight_layout(self, bucket_bytes: int) -> WeightLayout:
        return WeightLayout(())

    def broadcast_weights(self, buckets, probe_ids) -> tuple[list[int], list[float]]:
        self.calls.append(f"{self.name}.broadcast")
        return list(CHECKSUMS), list(PROBE)


def fake_roles(calls: list[str], generators: int = 2, learners: int = 2, reference_in_learners: bool = False) -> Roles:
    return Roles(
        rollout=[handle(FakeGenerator(f"g{i}", calls)) for i in range(generators)],
        reward=[handle(FakeScorer("scorer", calls))],
        reference=[] if reference_in_learners else [handle(FakeReference("reference", calls))],
        learners=[handle(FakeLearner(f"l{i}", calls)) for i in range(learners)],
        reference_in_learners=reference_in_learners,
    )


def fake_prompts(count: int) -> list[Prompt]:
    return [Prompt(i, f"prompt {i}", [1, 2 + i]) for i in range(count)]
