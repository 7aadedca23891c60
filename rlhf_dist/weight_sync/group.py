"""The gloo and NCCL transport: a process group of its own (rank 0 = learner rank 0, ranks 1.. =
generator processes), built from a TCPStore so that it can span processes that share no default
group; it lives beside the learners' DeepSpeed world. Gloo on CPU, NCCL between GPUs.
"""

from __future__ import annotations

import datetime
import socket

import torch

from rlhf_dist.weight_sync.buckets import Bucket, checksum, flatten_bucket, receive_buckets


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
        # One store can carry a gloo and an NCCL group at once (rlhf_dist/weight_sync/transports.py).
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


def connect_store(host: str, port: int, is_master: bool, timeout_s: float = 300.0):
    """The TCPStore of a sync: learner rank 0 serves it, every other member connects (retrying
    until ``timeout_s``, so members may start in any order)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    return dist.TCPStore(host, port, None, is_master=is_master, timeout=timeout, wait_for_workers=False)
