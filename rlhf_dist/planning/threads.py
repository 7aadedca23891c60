"""How many torch and OpenMP threads each actor computes with: its node's cores, shared among the
actors that compute at the same time.

A Ray CPU in a bundle is a scheduling quota, not a core: a rollout engine asking for 0.5 CPU still
runs alone while it generates in an on-policy step, and a core left idle then is time lost. So the
threads follow the phases, not the quotas:

- On-policy (``rollout.async_steps=0``) the phases of a step run one after another: generate
  (every rollout engine at once), score (every reward scorer), the reference pass (its workers, or
  the learner ranks that hold it), train (every learner rank). An actor gets its node's cores divided
  by the number of actors of its phase on that node.
- Under ``async_steps`` the producer's phases (generate, score, reference) run while the learners
  train, so each of them shares the node with the learner ranks there: the learners and the busiest
  producer role split the cores.

Never more threads than cores: STACK-NOTES measured a tiny-model step ~6x slower with two threads in
every process while the processes ran at once. ``RLHF_DIST_MAX_THREADS`` caps every actor (the test
suite sets it to 1, so its runs stay deterministic and two test processes do not fight for cores).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from rlhf_dist.errors import UserError

MAX_THREADS_ENV = "RLHF_DIST_MAX_THREADS"
PRODUCERS = ("rollout", "reward", "reference")  # the phases that produce a batch, in order


class _Slot(Protocol):
    role: str
    node_id: str

    @property
    def name(self) -> str: ...


def thread_cap() -> int | None:
    """``RLHF_DIST_MAX_THREADS`` as a positive int, or None when unset; a bad value is a clear error."""
    raw = os.environ.get(MAX_THREADS_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{MAX_THREADS_ENV}={raw!r}: expected a positive integer (threads per actor), or unset it")
    return int(raw)


def plan_threads(
    slots: Iterable[_Slot], cores: dict[str, float], overlapped: bool, cap: int | None = None
) -> dict[str, int]:
    """Threads per actor name. ``cores``: CPUs per node id; ``overlapped``: the producer phases run
    while the learners train (``async_steps > 0``); ``cap``: at most this many per actor."""
    slots = list(slots)
    on_node = Counter((s.node_id, s.role) for s in slots)
    threads = {}
    for s in slots:
        if not overlapped:
            busy = on_node[(s.node_id, s.role)]
        elif s.role == "learner":
            busy = on_node[(s.node_id, "learner")] + max(on_node[(s.node_id, r)] for r in PRODUCERS)
        else:
            busy = on_node[(s.node_id, s.role)] + on_node[(s.node_id, "learner")]
        n = max(1, math.floor(cores.get(s.node_id, 1.0) + 1e-9) // max(busy, 1))
        threads[s.name] = min(n, cap) if cap else n
    return threads
