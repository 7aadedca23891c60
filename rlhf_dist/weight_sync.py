"""Weight sync: the learner hands the policy to every generator, then both sides prove it.

The driver holds a `WeightSync` (below): it opens the groups, pushes each new policy version and
verifies it. A `SyncGroup` is a process group of its own (rank 0 = learner rank 0, ranks 1.. = generator
processes), built from a TCPStore so that it can span processes that share no default group; it
lives beside the learners' DeepSpeed world. Gloo on CPU, NCCL on GPU; a generator on a learner rank's
own GPU gets that rank's buckets by CUDA IPC instead (transport per generator: rlhf_dist/sync_transport.py,
the sending and receiving ends: rlhf_dist/sync_channels.py).

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

from rlhf_dist.adapters import AdapterSpec
from rlhf_dist.sync_transport import Transport, choose_transports, direct_kind, sync_routes

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
            store = connect_store(host, port, rank == 0, timeout_s)
        self.base_store = store
        # One store can carry a gloo and an NCCL group at once (rlhf_dist/sync_transport.py).
        store = dist.PrefixStore(f"rlhf-dist-sync-{generation}-{backend}", store)
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
        # gloo carries host memory: a GPU generator on a CPU learner's group moves what arrived.
        landing = "cpu" if self.backend == "gloo" else device
        flat = torch.empty(bucket.numel, dtype=bucket.dtype, device=landing)
        self.broadcast(flat, src=0)
        return flat.to(device), checksum(flat)

    def receive_all(
        self, buckets: tuple[Bucket, ...] | list[Bucket], device: str | torch.device = "cpu"
    ) -> tuple[list[tuple[str, torch.Tensor]], list[int]]:
        """Ranks > 0: receive every bucket; returns (named tensors, checksums)."""
        return receive_buckets(self.receive_bucket, buckets, device)


def receive_buckets(receive_bucket, buckets, device) -> tuple[list[tuple[str, torch.Tensor]], list[int]]:
    """Every bucket through ``receive_bucket(bucket, device) -> (flat, checksum)``, whatever the
    transport (a group's broadcast, a CUDA IPC channel); returns (named tensors, checksums)."""
    named: list[tuple[str, torch.Tensor]] = []
    sums: list[int] = []
    for bucket in buckets:
        flat, digest = receive_bucket(bucket, device)
        named.extend(unflatten_bucket(flat, bucket))
        sums.append(digest)
    return named, sums


def connect_store(host: str, port: int, is_master: bool, timeout_s: float = 300.0):
    """The TCPStore of a sync: learner rank 0 serves it, every other member connects (retrying
    until ``timeout_s``, so members may start in any order)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    return dist.TCPStore(host, port, None, is_master=is_master, timeout=timeout, wait_for_workers=False)


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
    (`rlhf_dist.sync_transport`): CUDA IPC to an engine on a learner rank's own GPU, NCCL between
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
        from rlhf_dist.remote import gather

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
        from rlhf_dist.remote import ActorFailed, gather

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
