"""The CUDA IPC transport (both processes on one GPU).

The sender flattens a bucket in its GPU memory and shares it with
`torch.multiprocessing.reductions.reduce_tensor`; the handle, written as JSON (no pickle crosses the
store), goes through the sync's TCPStore; the receiver opens it in its own process (for vLLM in the
engine's worker), copies the bucket into memory of its own on the same GPU, takes the checksum and
acknowledges. The sender keeps the buffer alive until that acknowledgement: one bucket in flight, so
the extra GPU memory is one bucket, never a second copy of the model.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass

import torch

from rlhf_dist.weight_sync.buckets import Bucket, checksum, receive_buckets
from rlhf_dist.weight_sync.controller import WeightSyncError


@dataclass(frozen=True)
class IpcHandle:
    """`reduce_tensor`'s rebuild arguments for a CUDA tensor, as plain data; bytes in base64."""

    device_uuid: str  # the GPU holding it; the receiver opens it on its own index of that GPU
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: str  # e.g. "torch.bfloat16"
    storage_cls: str  # TypedStorage or UntypedStorage
    storage_handle: str
    storage_size_bytes: int
    storage_offset_bytes: int
    ref_counter_handle: str
    ref_counter_offset: int
    event_handle: str | None
    event_sync_required: bool

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> IpcHandle:
        fields = json.loads(data)
        return cls(**{**fields, "size": tuple(fields["size"]), "stride": tuple(fields["stride"])})


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def device_uuid(index: int) -> str:
    return str(torch.cuda.get_device_properties(index).uuid)


def share_cuda(tensor: torch.Tensor) -> IpcHandle:
    """An IPC handle of a CUDA tensor; keep the tensor alive until the receiver has copied it."""
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(tensor.detach())
    (_, size, stride, offset, storage_cls, dtype, device, handle, size_bytes, offset_bytes, _, rc_handle,
     rc_offset, event, event_sync) = args
    return IpcHandle(
        device_uuid(device), tuple(size), tuple(stride), offset, str(dtype), storage_cls.__name__, _b64(handle),
        size_bytes, offset_bytes, _b64(rc_handle), rc_offset, _b64(event), bool(event_sync),
    )


def open_cuda(handle: IpcHandle) -> torch.Tensor:
    """The tensor behind ``handle``, opened in this process (memory shared with the sender)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    local = [i for i in range(torch.cuda.device_count()) if device_uuid(i) == handle.device_uuid]
    if not local:
        raise WeightSyncError(
            f"a CUDA IPC handle arrived for GPU {handle.device_uuid}, which this process does not see "
            f"(CUDA_VISIBLE_DEVICES shows {[device_uuid(i) for i in range(torch.cuda.device_count())]}); "
            "IPC needs both ends on one GPU (placement.colocate=true)"
        )
    dtype = getattr(torch, handle.dtype.removeprefix("torch."))
    storage_cls = getattr(torch.storage, handle.storage_cls)
    return rebuild_cuda_tensor(
        torch.Tensor, torch.Size(handle.size), handle.stride, handle.offset, storage_cls, dtype, local[0],
        _unb64(handle.storage_handle), handle.storage_size_bytes, handle.storage_offset_bytes, False,
        _unb64(handle.ref_counter_handle), handle.ref_counter_offset, _unb64(handle.event_handle),
        handle.event_sync_required,
    )


def _wait_for_writes(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.current_stream(tensor.device).synchronize()


def _channel_store(store, channel: str, generation: int):
    import torch.distributed as dist

    return dist.PrefixStore(f"rlhf-dist-ipc-{generation}-{channel}", store)


class IpcSender:
    """A learner rank's end of one CUDA IPC pair: one bucket in flight, handed over and acknowledged."""

    def __init__(self, store, channel: str, generation: int):
        self.store, self.channel = _channel_store(store, channel, generation), channel

    def send(self, flat: torch.Tensor) -> None:
        _wait_for_writes(flat)  # the bucket is complete before the other process reads it
        self.store.set("handle", share_cuda(flat).to_bytes())
        self.store.get("ack")  # blocks until the receiver copied it (or the store times out)
        self.store.delete_key("ack")


class IpcReceiver:
    """A generator's end of a CUDA IPC pair; receives like a `SyncGroup`."""

    def __init__(self, store, channel: str, generation: int):
        self.base_store = store
        self.store = _channel_store(store, channel, generation)

    def receive_bucket(self, bucket: Bucket, device: str | torch.device = "cuda") -> tuple[torch.Tensor, int]:
        handle = IpcHandle.from_bytes(self.store.get("handle"))
        self.store.delete_key("handle")
        shared = open_cuda(handle)
        if shared.numel() != bucket.numel or shared.dtype != bucket.dtype:
            raise WeightSyncError(
                f"a CUDA IPC bucket of {shared.numel()} x {shared.dtype} arrived where {bucket.numel} x "
                f"{bucket.dtype} was planned: learner and generator disagree on the weight layout"
            )
        flat = shared.to(device, copy=True)  # ours: the learner frees its buffer after the ack
        _wait_for_writes(flat)
        del shared
        self.store.set("ack", b"1")
        return flat, checksum(flat)

    def receive_all(self, buckets, device: str | torch.device = "cuda"):
        return receive_buckets(self.receive_bucket, buckets, device)
