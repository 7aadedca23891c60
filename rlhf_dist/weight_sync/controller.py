"""Weight sync: the learner hands the policy to every generator, then both sides prove it.

The driver holds a `WeightSync` (below): it opens the channels, pushes each new policy version and
verifies it. The transport per generator is chosen in `rlhf_dist.weight_sync.transports`: a process
group (`group.py`: gloo on CPU, NCCL on GPU) or CUDA IPC to an engine on a learner rank's own GPU
(`ipc.py`); `channels.py` opens the sending and receiving ends, and `buckets.py` cuts the weights into
checksummed buckets. A sync is verified only if every generator's checksum list equals the learner's,
and the generators' logprobs on a probe input then match the learner's.

With LoRA on, the `WeightLayout` carries only the adapter tensors and their `AdapterSpec`
(rlhf_dist/weight_sync/adapters.py): the generators keep their base weights and load each version as
an adapter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlhf_dist.driver.remote_calls import ActorFailed, gather
from rlhf_dist.weight_sync.buckets import DEFAULT_BUCKET_BYTES, Bucket, WeightLayout
from rlhf_dist.weight_sync.transports import Transport, choose_transports, direct_kind, sync_routes


class WeightSyncError(RuntimeError):
    """A generator does not hold what the learner sent."""


@dataclass(frozen=True)
class SyncReceipt:
    """A generator's account of one sync, checked by the driver against the learner's."""

    checksums: list[int]  # one per bucket, of the buffers as received
    nbytes: int  # bytes received over the sync group
    probe_logprobs: list[float]  # after loading, on the driver's probe ids


def verify_checksums(sent: list[int], received: dict[str, list[int]], version: int) -> None:
    """Raise `WeightSyncError` unless every generator received exactly the sent buckets."""
    for who, sums in received.items():
        if sums != sent:
            bad = [i for i, (a, b) in enumerate(zip(sent, sums)) if a != b]
            if len(sums) != len(sent):
                detail = f"{len(sums)} buckets received, {len(sent)} sent"
            else:
                detail = f"checksums differ in buckets {bad[:8]}"
            raise WeightSyncError(
                f"weight sync to policy_version {version} failed on {who}: {detail}. The generator "
                "would sample from stale or corrupt weights; stopping the run"
            )


class WeightSync:
    """The driver's side of weight sync: opens the groups and channels, moves the learner's weights to
    every generator, and proves they arrived.

    The transfer goes through the actors' ``init_weight_sync`` / ``broadcast_weights`` /
    ``receive_weights`` methods, over the transport chosen per generator from the placement ``plan``
    (`rlhf_dist.weight_sync.transports`): CUDA IPC to an engine on a learner rank's own GPU, NCCL between
    GPUs, gloo on CPU, a host copy over gloo from a GPU learner to a CPU generator. Without a plan
    nobody shares a GPU, and the devices the actors see decide. Checksums and the probe verify every
    generator alike, whatever its transport.
    """

    def __init__(self, learners: list, generators: list, address: tuple[str, int], probe_ids: list[int],
                 tensor_parallel_size: int = 1, dtype: str = "float32", plan=None):
        self.learners, self.generators, self.address = learners, generators, address
        self.probe_ids, self.tensor_parallel_size, self.plan = probe_ids, tensor_parallel_size, plan
        # fp32 engines agree to rounding; half precision reorders sums (CONTRACTS: stated looser).
        self.tolerance = 1e-4 if dtype == "float32" else 2e-2
        self.generation = 0
        self.layout = WeightLayout(())
        self.transports: list[Transport] = []

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return self.layout.buckets

    def open(self, generation: int = 0) -> None:
        """Choose the transports, open the groups and channels (learner ranks + every generator
        process) and plan the buckets. A new ``generation`` rebuilds them after a member restarted
        (fixed membership: everyone rejoins)."""
        self.generation = generation
        members = [*self.learners, *self.generators]
        gpus = gather([m.cuda_device.remote() for m in members], "weight sync setup (devices)")
        self.transports = self._transports(gpus[: len(self.learners)], gpus[len(self.learners):])
        learner_routes, generator_routes = sync_routes(
            self.transports, len(self.learners), self.tensor_parallel_size, self.address
        )
        calls = [l.init_weight_sync.remote(r, generation) for l, r in zip(self.learners, learner_routes)]
        calls += [g.init_weight_sync.remote(r, generation) for g, r in zip(self.generators, generator_routes)]
        gather(calls, "weight sync setup")
        self.layout = gather([self.learners[0].weight_layout.remote(DEFAULT_BUCKET_BYTES)], "learner")[0]

    def _transports(self, learner_gpus: list[str | None], generator_gpus: list[str | None]) -> list[Transport]:
        """The plan's choice, corrected by the GPUs the actors really see (CUDA device UUIDs)."""
        if self.plan is None:
            transports = [Transport(i, direct_kind(learner_gpus[0] is not None, gpu is not None), 0)
                          for i, gpu in enumerate(generator_gpus)]
        else:
            sees = {f"learner-{i}": gpu is not None for i, gpu in enumerate(learner_gpus)}
            sees |= {f"rollout-{i}": gpu is not None for i, gpu in enumerate(generator_gpus)}
            transports = choose_transports(self.plan, sees)
        check_devices(transports, learner_gpus, generator_gpus)
        return transports

    def reopen(self) -> None:
        self.open(self.generation + 1)

    def push(self, version: int) -> dict[str, float]:
        """Send the learner's weights, as policy ``version``, to every generator; verify checksums
        and the probe. Raises `WeightSyncError` when a generator does not hold what was sent.
        (A re-send after a restart or a resume passes the version the generators held.)
        """
        start = time.perf_counter()
        sends = [l.broadcast_weights.remote(self.buckets, self.probe_ids) for l in self.learners]
        receives = [g.receive_weights.remote(self.layout, self.probe_ids) for g in self.generators]
        try:
            sent = gather(sends, "learner (weight sync)")  # per rank: (checksums of what it sent, probe)
        except ActorFailed:
            gather(receives, "rollout (weight sync)")  # a generator that died surfaces as ActorDied
            raise
        received: list[SyncReceipt] = gather(receives, "rollout (weight sync)")
        seconds = time.perf_counter() - start
        senders = [t.sender for t in self.transports] or [0] * len(received)
        for i, (receipt, rank) in enumerate(zip(received, senders)):
            verify_checksums(sent[rank][0], {f"rollout-{i}": receipt.checksums}, version)
        probe_diff = verify_probe(sent[0][1], [r.probe_logprobs for r in received], self.tolerance, version)
        nbytes = max(r.nbytes for r in received)  # every generator is handed the same buckets
        return {
            "sync/verified": 1.0,
            "sync/seconds": seconds,
            "sync/bytes": float(nbytes),
            "sync/mb_per_s": nbytes / 1e6 / max(seconds, 1e-9),
            "sync/probe_max_diff": probe_diff,
        }


def check_devices(transports: list[Transport], learner_gpus: list[str | None], generator_gpus: list[str | None]) -> None:
    """The GPUs Ray handed out must agree with the plan: an IPC pair on one GPU, an NCCL pair on two
    (NCCL refuses two ranks of one group on one device). ``*_gpus``: each actor's CUDA device UUID."""
    for t in transports:
        mine, theirs = generator_gpus[t.generator], learner_gpus[t.sender]
        if t.kind == "ipc" and mine != theirs:
            raise WeightSyncError(
                f"rollout-{t.generator} was planned on the GPU of learner-{t.sender} (CUDA IPC), but sees GPU "
                f"{mine} while the learner sees {theirs}; the placement groups do not match the plan"
            )
        if t.kind == "nccl" and mine == theirs:
            raise WeightSyncError(
                f"rollout-{t.generator} and learner-{t.sender} landed on the same GPU ({mine}) in different bundles, "
                "and NCCL cannot join two ranks on one device: set placement.colocate=true to share GPUs "
                "(weights then go by CUDA IPC), or give rollout and learner whole GPUs (num_gpus=1)"
            )


def verify_probe(learner: list[float], generators: list[list[float]], tolerance: float, version: int) -> float:
    """The largest gap between any generator's probe log-probs and the learner's; raise
    `WeightSyncError` past ``tolerance`` (the engine did not load what it received)."""
    want = torch.tensor(learner)
    diff = max(float((torch.tensor(probe) - want).abs().max()) for probe in generators)
    if diff > tolerance:
        raise WeightSyncError(
            f"after sync {version}, generator log-probs on the probe differ from the "
            f"learner's by {diff:.2e} (> {tolerance:g}); the engine did not load what was sent"
        )
    return diff
