"""What a weight sync carries: tensors in buckets, and the checksum of each bucket.

Tensors travel in buckets: all tensors of one bucket are flattened into one buffer and sent with a
single collective. Each side computes a checksum of every bucket buffer (the learner of what it sent,
each generator of what it received), and the controller compares them. Names are Hugging Face
checkpoint names; vLLM fuses some weights after loading, so checksums are taken on the buffers, never
on vLLM's parameters.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhf_dist.weight_sync.adapters import AdapterSpec

# bench/sync_buckets.py (256 MB fp32 model, loopback gloo, checksums included): 1 MB buckets
# ~260 MB/s, 4-16 MB ~540-850 MB/s, 32 MB ~560, 128 MB ~420-520. 16 MB sits on the plateau and
# keeps the number of collectives low for NCCL.
DEFAULT_BUCKET_BYTES = 16 * 1024 * 1024


_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)}


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
