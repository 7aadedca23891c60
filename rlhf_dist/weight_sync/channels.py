"""The two ends of a weight sync: what a learner rank opens to send, what a generator opens to receive.

A learner rank's `LearnerSender` hands every bucket to the groups it is rank 0 of (NCCL, or gloo with a
host copy when the learner is on a GPU) and to its CUDA IPC channels. A generator's receiver is a
`SyncGroup` or an `IpcReceiver`; both have ``receive_all(buckets, device) -> (named, checksums)``, so the
engines load what arrived the same way whatever the transport (`rlhf_dist/weight_sync/transports.py` chose it).
"""

from __future__ import annotations

import torch

from rlhf_dist.weight_sync.buckets import checksum, flatten_bucket
from rlhf_dist.weight_sync.group import SyncGroup, connect_store
from rlhf_dist.weight_sync.ipc import IpcReceiver, IpcSender
from rlhf_dist.weight_sync.transports import GeneratorRoute, LearnerRoute


class LearnerSender:
    """What one learner rank opened to send: the groups it is rank 0 of and its IPC channels."""

    def __init__(self, route: LearnerRoute, generation: int, store=None, timeout_s: float = 300.0):
        if store is None and (route.serves_store or route.sends):
            store = connect_store(route.host, route.port, route.serves_store, timeout_s)
        self.store = store  # kept: a rebuild (a generator restarted) reuses the server this rank runs
        self.groups = [
            SyncGroup(route.host, route.port, 0, world, backend, generation, timeout_s, store=store)
            for backend, world in route.groups
        ]
        self.channels = [IpcSender(store, channel, generation) for channel in route.ipc_channels]

    @property
    def sends(self) -> bool:
        return bool(self.groups or self.channels)

    def send_bucket(self, tensors: list[torch.Tensor]) -> int:
        """Hand one bucket to every group and channel; returns its checksum."""
        flat = flatten_bucket(tensors)
        host = None
        for group in self.groups:
            if group.backend == "gloo" and flat.is_cuda:  # a CPU generator: through a host copy
                host = flat.cpu() if host is None else host
                group.broadcast(host, src=0)
            else:
                group.broadcast(flat, src=0)
        for channel in self.channels:
            channel.send(flat)
        return checksum(flat if host is None else host)


def open_receiver(route: GeneratorRoute, generation: int, local_rank: int = 0, timeout_s: float = 300.0):
    """A generator process's end of its route: a `SyncGroup` or an `IpcReceiver`."""
    if route.kind == "ipc":
        return IpcReceiver(connect_store(route.host, route.port, False, timeout_s), route.channel, generation)
    return SyncGroup(route.host, route.port, route.rank + local_rank, route.world_size, route.backend,
                     generation, timeout_s)
