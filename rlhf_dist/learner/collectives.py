"""Reductions over the learners' data-parallel ranks: every rank-wide sum, maximum or minimum a
learner or a supervised stage needs goes through `all_reduce`.

Every rank must call it with as many values, in the same order: it is a collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(values: list[float], op: str, world_size: int, device: torch.device,
               dtype: torch.dtype = torch.float64) -> list[float]:
    """``values`` reduced element-wise over the ranks of the default group (``op``: sum, max or min);
    unchanged in a world of one. float64 by default, so sums of token counts stay exact."""
    if world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=dtype, device=device)
    dist.all_reduce(tensor, op=_OPS[op])
    return tensor.cpu().tolist()
