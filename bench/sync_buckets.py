"""Measure weight-sync bandwidth over a gloo SyncGroup for several bucket sizes.

    python bench/sync_buckets.py [--model-mb 256]

Two processes on this machine: rank 0 sends a synthetic fp32 "model" of 4 MB tensors in buckets,
rank 1 receives and checksums them, as a generator does. Prints MB/s per bucket size; the default
bucket size in rlhf_dist/weight_sync/controller.py was picked from this.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.multiprocessing as mp

from rlhf_dist.weight_sync.buckets import TensorMeta, checksum, plan_buckets
from rlhf_dist.weight_sync.group import SyncGroup, free_port

SIZES_MB = (1, 4, 8, 16, 32, 128)


def _metas(model_mb: int) -> list[TensorMeta]:
    per = 1024 * 1024  # 4 MB fp32 tensors
    return [TensorMeta(f"w{i}", (per,), "torch.float32") for i in range(model_mb // 4)]


def _run(rank: int, port: int, model_mb: int, results) -> None:
    torch.set_num_threads(1)
    group = SyncGroup("127.0.0.1", port, rank, 2, "gloo")
    metas = _metas(model_mb)
    tensors = {m.name: torch.randn(m.shape) for m in metas} if rank == 0 else {}
    for size in SIZES_MB:
        buckets = plan_buckets(metas, size * 1024 * 1024)
        start = time.perf_counter()
        for bucket in buckets:
            if rank == 0:
                group.send_bucket([tensors[m.name] for m in bucket.tensors])
            else:
                flat, _ = group.receive_bucket(bucket)
                checksum(flat)
        if rank == 1:
            results[size] = model_mb / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-mb", type=int, default=256)
    args = parser.parse_args()
    port = free_port()
    results = mp.Manager().dict()
    mp.spawn(_run, args=(port, args.model_mb, results), nprocs=2)
    print(f"sync of a {args.model_mb} MB fp32 model over loopback gloo (send + receive + checksums):")
    for size in SIZES_MB:
        print(f"  bucket {size:>4} MB: {results[size]:8.1f} MB/s")


if __name__ == "__main__":
    main()
