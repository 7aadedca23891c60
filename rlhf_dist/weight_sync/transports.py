"""Which transport carries the weights to each generator, and who meets whom: pure, no torch.distributed.

`choose_transports(plan)` decides per generator, from the placement plan (which knows the slots that
share a bundle, i.e. a GPU):

- ``ipc``: the generator shares its GPU with a learner rank. CUDA IPC hands it that rank's buckets with
  no copy through the host. NCCL could not do it: it refuses two ranks of one group on one device
  (OpenRLHF #726). When every learner rank has an engine on its own GPU, each rank hands its buckets to
  its own engine (veRL style); otherwise rank 0 sends everything, by IPC to an engine on its GPU.
- ``nccl``: learner rank 0 and the generator are on distinct GPUs: a broadcast over NCCL.
- ``gloo``: the learner is on CPU: a broadcast over gloo (a GPU generator moves what it received).
- ``host``: a GPU learner feeds a CPU generator: rank 0 copies each bucket to the host, then gloo.

`sync_routes` turns the choice into what each member opens (`rlhf_dist/weight_sync/ipc.py`): one group
per collective backend in use (rank 0 = learner rank 0, then the generators of that backend, a
tensor-parallel engine taking one rank per worker) and one IPC channel per colocated pair, all meeting
at the TCPStore that learner rank 0 serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from rlhf_dist.planning.placement import Plan, Slot

TransportKind = Literal["ipc", "nccl", "gloo", "host"]
BACKENDS = ("nccl", "gloo")  # the collective groups, in the order every member opens them


@dataclass(frozen=True)
class Transport:
    """How generator ``generator`` (its rollout index) gets the weights, and from which learner rank."""

    generator: int
    kind: TransportKind
    sender: int  # the learner rank that hands over the buckets (0 unless ipc from another rank)

    @property
    def backend(self) -> str | None:
        """The collective group carrying it: nccl, gloo (``gloo`` and ``host``), or None for ``ipc``."""
        return {"nccl": "nccl", "gloo": "gloo", "host": "gloo"}.get(self.kind)


def direct_kind(learner_on_gpu: bool, generator_on_gpu: bool) -> TransportKind:
    """The transport between learner rank 0 and a generator that shares no GPU with it."""
    if not learner_on_gpu:
        return "gloo"
    return "nccl" if generator_on_gpu else "host"


def choose_transports(plan: Plan, sees_cuda: Mapping[str, bool] | None = None) -> list[Transport]:
    """One `Transport` per generator, in rollout order.

    ``sees_cuda`` maps an actor's name (``learner-0``, ``rollout-1``) to whether it really sees a GPU;
    an actor left out is taken at the plan's word. It corrects plans whose GPUs are declared but absent
    (a test cluster): such an actor computes on CPU, and its transport follows.
    """
    sees_cuda = sees_cuda or {}

    def on_gpu(slot: Slot) -> bool:
        return slot.num_gpus > 0 and sees_cuda.get(slot.name, True)

    learners, generators = plan.role_slots("learner"), plan.role_slots("rollout")
    sharing: dict[int, int] = {}  # generator index -> the learner rank in its bundle, both on the GPU
    for gen in generators:
        rank = next((l.index for l in learners if (l.group, l.bundle) == (gen.group, gen.bundle)), None)
        if rank is not None and on_gpu(gen) and on_gpu(plan.slot("learner", rank)):
            sharing[gen.index] = rank
    every_rank = {l.index for l in learners} <= set(sharing.values())
    rank0_gpu = bool(learners) and on_gpu(learners[0])
    out = []
    for gen in generators:
        rank = sharing.get(gen.index)
        if rank is not None and (every_rank or rank == 0):
            out.append(Transport(gen.index, "ipc", rank))
        else:
            out.append(Transport(gen.index, direct_kind(rank0_gpu, on_gpu(gen)), 0))
    return out


@dataclass(frozen=True)
class GeneratorRoute:
    """Where one generator receives: its transport and its place in the group or channel carrying it."""

    host: str  # learner rank 0's TCPStore, where every member meets
    port: int
    kind: TransportKind
    rank: int = 0  # its first rank in the group (a tensor-parallel worker adds its local rank); ipc: 0
    world_size: int = 0  # of that group; ipc: 0
    channel: str = ""  # ipc: the store namespace of its pair with the sending rank

    @property
    def backend(self) -> str | None:
        return Transport(0, self.kind, 0).backend


@dataclass(frozen=True)
class LearnerRoute:
    """What one learner rank opens to send: the groups it is rank 0 of, and its IPC channels."""

    host: str
    port: int
    serves_store: bool  # rank 0 runs the TCPStore (even when every generator is on IPC)
    groups: tuple[tuple[str, int], ...] = ()  # (backend, world size), rank 0 only
    ipc_channels: tuple[str, ...] = ()  # one per generator this rank hands its buckets by CUDA IPC

    @property
    def sends(self) -> bool:
        return bool(self.groups or self.ipc_channels)


def ipc_channel(generator: int) -> str:
    return f"rollout-{generator}"


def sync_routes(
    transports: list[Transport], num_learners: int, tensor_parallel_size: int, address: tuple[str, int]
) -> tuple[list[LearnerRoute], list[GeneratorRoute]]:
    """The route of every learner rank and every generator (in rollout order) for ``transports``."""
    host, port = address
    routes: dict[int, GeneratorRoute] = {}
    groups = []
    for backend in BACKENDS:
        members = [t for t in transports if t.backend == backend]
        if not members:
            continue
        world = 1 + len(members) * tensor_parallel_size
        groups.append((backend, world))
        for k, t in enumerate(members):
            routes[t.generator] = GeneratorRoute(host, port, t.kind, 1 + k * tensor_parallel_size, world)
    channels: dict[int, list[str]] = {}
    for t in transports:
        if t.kind == "ipc":
            routes[t.generator] = GeneratorRoute(host, port, "ipc", channel=ipc_channel(t.generator))
            channels.setdefault(t.sender, []).append(ipc_channel(t.generator))
    learners = [
        LearnerRoute(host, port, rank == 0, tuple(groups) if rank == 0 else (), tuple(channels.get(rank, ())))
        for rank in range(num_learners)
    ]
    return learners, [routes[t.generator] for t in transports]


def describe(transports: list[Transport]) -> str:
    """One line for logs: ``rollout-0 ipc from learner-0, rollout-1 nccl``."""
    return ", ".join(
        f"rollout-{t.generator} " + (f"ipc from learner-{t.sender}" if t.kind == "ipc" else t.kind) for t in transports
    )
