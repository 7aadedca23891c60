"""Weight sync: the learner's rank 0 broadcasts the policy to every generator, then both sides prove it.

The driver holds a `WeightSync` (below): it opens the group, pushes each new policy version and
verifies it. A `SyncGroup` is a process group of its own (rank 0 = learner rank 0, ranks 1.. = generator
processes), built from a TCPStore so that it can span processes that share no default group; it
lives beside the learners' DeepSpeed world. Gloo on CPU, NCCL on GPU.

Tensors travel in buckets: all tensors of one bucket are flattened into one buffer and broadcast
with a single collective. Each side computes a checksum of every bucket buffer (the learner of
what it sent, each generator of what it received) and the driver compares them: a sync is
verified only if every generator's list equals the learner's, and the generators' logprobs on a
probe input then match the learner's. Names are Hugging Face checkpoint names; vLLM fuses some
weights after loading, so checksums are taken on the buffers, never on vLLM's parameters.

With LoRA on, the `WeightLayout` carries only the adapter tensors and their `AdapterSpec`
(rlhf_dist/adapters.py): the generators keep their base weights and load each version as an adapter.
"""

from __future__ import annotations

import datetime
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhf_dist.adapters import AdapterSpec, write_adapter

# bench/sync_buckets.py (256 MB fp32 model, loopback gloo, checksums included): 1 MB buckets
# ~260 MB/s, 4-16 MB ~540-850 MB/s, 32 MB ~560, 128 MB ~420-520. 16 MB sits on the plateau and
# keeps the number of collectives low for NCCL.
DEFAULT_BUCKET_BYTES = 16 * 1024 * 1024

_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


class WeightSyncError(RuntimeError):
    """A generator does not hold what the learner sent."""


@dataclass(frozen=True)
class TensorMeta:
    name: str  # Hugging Face checkpoint name, e.g. "model.layers.0.self_attn.q_proj.weight"
    shape: tuple[int, ...]
    dtype: str  # e.g. "torch.float32"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Bucket:
    """Tensors that travel together as one flat buffer of a single dtype."""

    tensors: tuple[TensorMeta, ...]

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.tensors[0].dtype]

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class WeightLayout:
    """What one sync sends, planned once: the buckets, and the adapter they form with LoRA on."""

    buckets: tuple[Bucket, ...]
    adapter: AdapterSpec | None = None  # None: full Hugging Face weights; else LoRA factors (peft names)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)


@dataclass(frozen=True)
class SyncReceipt:
    """A generator's account of one sync, checked by the driver against the learner's."""

    checksums: list[int]  # one per bucket, of the buffers as received
    nbytes: int  # bytes received over the sync group
    probe_logprobs: list[float]  # after loading, on the driver's probe ids


def plan_buckets(metas: list[TensorMeta], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[Bucket]:
    """Group tensors, in order, into buckets of one dtype and at most ``bucket_bytes``.

    A tensor larger than ``bucket_bytes`` gets a bucket of its own.
    """
    buckets: list[Bucket] = []
    current: list[TensorMeta] = []
    current_bytes = 0
    for meta in metas:
        size = meta.numel * torch.empty((), dtype=_DTYPES[meta.dtype]).element_size()
        if current and (current_bytes + size > bucket_bytes or meta.dtype != current[0].dtype):
            buckets.append(Bucket(tuple(current)))
            current, current_bytes = [], 0
        current.append(meta)
        current_bytes += size
    if current:
        buckets.append(Bucket(tuple(current)))
    return buckets


def checksum(flat: torch.Tensor) -> int:
    """CRC-32 of the buffer's raw bytes: any changed, lost or swapped byte shows.

    Computed on the host, so learner and generator agree whatever device each side holds the
    buffer on (a GPU buffer is copied out first; bench/sync_buckets.py measures the cost: crc32
    runs at ~2 GB/s on one core here, far above the broadcast itself).
    """
    data = flat.detach().contiguous().view(-1).cpu()
    return zlib.crc32(memoryview(data.view(torch.uint8).numpy()))


def flatten_bucket(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten_bucket(flat: torch.Tensor, bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    offset = 0
    for meta in bucket.tensors:
        yield meta.name, flat[offset : offset + meta.numel].view(meta.shape)
        offset += meta.numel


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def node_ip() -> str:
    """This host's address as others on the cluster see it (127.0.0.1 for a local run)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


class SyncGroup:
    """A process group of ``world_size`` members: learner rank 0 is rank 0, generators follow.

    Every member constructs it at the same time (the TCPStore waits for all). ``generation``
    namespaces the store keys so that a group can be rebuilt on the same port after a restart.
    """

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str = "gloo",
        generation: int = 0,
        timeout_s: float = 300.0,
        store=None,
    ):
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        if store is None:
            store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        self.base_store = store
        store = dist.PrefixStore(f"rlhf-dist-sync-{generation}", store)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        if backend == "gloo":
            self._pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        elif backend == "nccl":
            self._pg = dist.ProcessGroupNCCL(store, rank, world_size)
        else:
            raise ValueError(f"sync backend must be gloo or nccl, got {backend!r}")
        self._store = store

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        self._pg.broadcast(tensor, src).wait()

    def send_bucket(self, tensors: list[torch.Tensor]) -> int:
        """Rank 0: broadcast one bucket; returns its checksum."""
        flat = flatten_bucket(tensors)
        self.broadcast(flat, src=0)
        return checksum(flat)

    def receive_bucket(self, bucket: Bucket, device: str | torch.device = "cpu") -> tuple[torch.Tensor, int]:
        """Ranks > 0: receive one bucket; returns the flat buffer and its checksum."""
        flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=device)
        self.broadcast(flat, src=0)
        return flat, checksum(flat)

    def receive_all(
        self, buckets: tuple[Bucket, ...] | list[Bucket], device: str | torch.device = "cpu"
    ) -> tuple[list[tuple[str, torch.Tensor]], list[int]]:
        """Ranks > 0: receive every bucket; returns (named tensors, checksums)."""
        named: list[tuple[str, torch.Tensor]] = []
        sums: list[int] = []
        for bucket in buckets:
            flat, digest = self.receive_bucket(bucket, device)
            named.extend(unflatten_bucket(flat, bucket))
            sums.append(digest)
        return named, sums


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
    """The driver's side of weight sync: opens the group, moves the learner's weights to every
    generator, and proves they arrived.

    The transfer goes through the actors' ``init_weight_sync`` / ``broadcast_weights`` /
    ``receive_weights`` methods over one collective transport for the whole group: ``gloo`` on
    CPU, ``nccl`` when the learners see a GPU (whatever the plan declared).
    """

    def __init__(self, learners: list, generators: list, address: tuple[str, int], probe_ids: list[int],
                 tensor_parallel_size: int = 1, dtype: str = "float32"):
        self.learners, self.generators, self.address = learners, generators, address
        self.probe_ids, self.tensor_parallel_size = probe_ids, tensor_parallel_size
        # fp32 engines agree to rounding; half precision reorders sums (CONTRACTS: stated looser).
        self.tolerance = 1e-4 if dtype == "float32" else 2e-2
        self.generation = 0
        self.layout = WeightLayout(())
        self.transport = "gloo"

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return self.layout.buckets

    def open(self, generation: int = 0) -> None:
        """Open the group (learner rank 0 + every generator process) and plan the buckets. A new
        ``generation`` rebuilds it after a member restarted (fixed membership: everyone rejoins)."""
        from rlhf_dist.remote import gather

        host, port = self.address
        tp = self.tensor_parallel_size
        world = 1 + len(self.generators) * tp
        self.generation = generation
        self.transport = gather([self.learners[0].sync_backend.remote()], "learner")[0]
        calls = [self.learners[0].init_weight_sync.remote(host, port, world, generation)]
        calls += [
            g.init_weight_sync.remote(host, port, 1 + i * tp, world, self.transport, generation)
            for i, g in enumerate(self.generators)
        ]
        gather(calls, "weight sync setup")
        self.layout = gather([self.learners[0].weight_layout.remote(DEFAULT_BUCKET_BYTES)], "learner")[0]

    def reopen(self) -> None:
        self.open(self.generation + 1)

    def push(self, version: int) -> dict[str, float]:
        """Send the learner's weights, as policy ``version``, to every generator; verify checksums
        and the probe. Raises `WeightSyncError` when a generator does not hold what was sent.
        (A re-send after a restart or a resume passes the version the generators held.)
        """
        from rlhf_dist.remote import ActorFailed, gather

        start = time.perf_counter()
        sends = [l.broadcast_weights.remote(self.buckets, self.probe_ids) for l in self.learners]
        receives = [g.receive_weights.remote(self.layout, self.probe_ids) for g in self.generators]
        try:
            sent, learner_probe = gather(sends, "learner (weight sync)")[0]
        except ActorFailed:
            gather(receives, "rollout (weight sync)")  # a generator that died surfaces as ActorDied
            raise
        received: list[SyncReceipt] = gather(receives, "rollout (weight sync)")
        seconds = time.perf_counter() - start
        verify_checksums(sent, {f"rollout-{i}": r.checksums for i, r in enumerate(received)}, version)
        probe_diff = verify_probe(learner_probe, [r.probe_logprobs for r in received], self.tolerance, version)
        nbytes = max(r.nbytes for r in received)  # every generator receives the same buckets
        return {
            "sync/verified": 1.0,
            "sync/seconds": seconds,
            "sync/bytes": float(nbytes),
            "sync/mb_per_s": nbytes / 1e6 / max(seconds, 1e-9),
            "sync/probe_max_diff": probe_diff,
        }


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


class VLLMWorkerExtension:
    """Mixed into vLLM's worker (``LLM(worker_extension_cls=...)``); called via ``collective_rpc``.

    The sync group is opened inside the worker process, so on GPUs the NCCL broadcast lands
    directly in the worker's device memory.
    """

    def init_weight_sync(self, host: str, port: int, rank_offset: int, world_size: int, backend: str, generation: int) -> bool:
        import torch.distributed as dist

        local_rank = dist.get_rank() if dist.is_initialized() and dist.get_world_size() > 1 else 0
        self._rlhf_sync = SyncGroup(host, port, rank_offset + local_rank, world_size, backend, generation)
        return True

    def receive_weights(self, layout: WeightLayout, adapter_dir: str | None = None) -> tuple[list[int], int]:
        """Receive a sync; returns the checksums and the bytes received. Full weights are loaded in
        place; an adapter is written to ``adapter_dir`` (by the first worker), for the engine to
        register as a LoRA (`rlhf_dist.rollout.VLLMEngine`)."""
        import torch.distributed as dist

        if getattr(self, "_rlhf_sync", None) is None:
            raise WeightSyncError("receive_weights before init_weight_sync: the sync group is not open")
        device = next(self.model_runner.model.parameters()).device
        named, sums = self._rlhf_sync.receive_all(layout.buckets, device)
        if layout.adapter is None:
            self.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)
        elif adapter_dir is None:
            raise WeightSyncError("an adapter arrived without a directory to write it to")
        elif not dist.is_initialized() or dist.get_rank() == 0:
            write_adapter(adapter_dir, layout.adapter, named)
        return sums, sum(t.nbytes for _, t in named)
