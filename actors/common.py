"""What every actor shell shares: one torch thread, and a record of when it was computing."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# One torch thread per process: on 2 cores, two threads made a tiny-model step ~6x slower.
ACTOR_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}


def actor_env() -> dict[str, str]:
    env = dict(ACTOR_ENV)
    try:
        import torch

        if torch.cuda.is_available():
            env.pop("DS_ACCELERATOR")
    except ImportError:
        pass
    env = {k: os.environ.get(k, v) for k, v in env.items()}
    if os.environ.get("PYTHONPATH"):
        # `module:function` reward components must import in the actors as they do here.
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


class ComputeClock:
    """Mixin: `@computing` methods log their wall-clock intervals; the driver pops them per step
    to measure orchestration overhead (step time outside every actor's compute)."""

    _intervals: list[tuple[float, float]]

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on (tests check it against the placement plan)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def rng_state(self) -> dict:
        """This actor's torch/numpy/python RNG states, for checkpoints."""
        from rlhf_dist.checkpoint import rng_state

        return rng_state()

    def set_rng_state(self, state: dict) -> bool:
        from rlhf_dist.checkpoint import set_rng_state

        set_rng_state(state)
        return True

    def pop_intervals(self) -> list[tuple[float, float]]:
        intervals, self._intervals = getattr(self, "_intervals", []), []
        return intervals


def computing(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        start = time.time()
        try:
            return method(self, *args, **kwargs)
        finally:
            if not hasattr(self, "_intervals"):
                self._intervals = []
            self._intervals.append((start, time.time()))

    return wrapper  # type: ignore[return-value]
