"""What every actor shell shares: the threads its placement plans (rlhf_dist/planning/threads.py), the
devices its bundle assigned (and no others),
and a record of when it was computing (`ComputeClock`, `computing`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from actors.log_relay import route_output_to_log
from rlhf_dist.checkpoints.files import rng_state, set_rng_state

F = TypeVar("F", bound=Callable[..., Any])


# One thread unless the plan says more (each role's actors get OMP_NUM_THREADS in their own runtime_env,
# launch/roles.py): on 2 cores, two threads in every process at once made a tiny-model step ~6x slower.
ACTOR_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# Explicit devices: Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor with num_gpus=0, which then
# sees every GPU of its node and piles onto cuda:0; with this set Ray makes it "" (the actor runs on CPU).
# Actors with GPUs see exactly their bundle's share, as cuda:0 (Ray sets the variable to their ids).
DEVICE_ENV = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}


# The same NCCL settings in every process of a sync group: vLLM's GPU build turns cuMem off in its
# processes (NCCL_CUMEM_ENABLE=0), and a learner left at NCCL's default hangs or fails in the group's
# first collective (SkyRL #143). Pinned, not overridable: they must agree everywhere.
NCCL_ENV = {"NCCL_CUMEM_ENABLE": "0"}


def actor_env() -> dict[str, str]:
    """The env_vars of every actor's runtime_env (launch/roles.py `start_ray`)."""
    env = dict(ACTOR_ENV)
    env |= DEVICE_ENV | NCCL_ENV
    if os.environ.get("PYTHONPATH"):
        # `module:function` reward components must import in the actors as they do here.
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def use_planned_threads() -> int:
    """Compute with the OMP_NUM_THREADS threads the plan gave this actor (its runtime_env); returns them.
    Set before any engine starts: vLLM's CPU worker forbids changing them afterwards."""
    import torch

    raw = os.environ.get("OMP_NUM_THREADS", "1")
    threads = int(raw) if raw.isdigit() and int(raw) > 0 else 1
    torch.set_num_threads(threads)
    return threads


def use_assigned_devices() -> bool:
    """Make this process compute on the devices its bundle assigned (Ray made them the only visible
    ones); returns whether it has a GPU. DeepSpeed's accelerator follows the process, not the driver:
    a CPU head may drive GPU workers, so DS_ACCELERATOR is set here, per actor, not cluster-wide."""
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
        return False
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        del os.environ["DS_ACCELERATOR"]  # inherited from a CPU driver (or the test settings)
    return True


class ComputeClock:
    """Mixin: `@computing` methods log their wall-clock intervals; the driver pops them per step
    to measure orchestration overhead (step time outside every actor's compute). Every actor's
    output goes to the run's log file before its ``__init__`` runs (`route_output_to_log`)."""

    _intervals: list[tuple[float, float]]

    def __new__(cls, *args: Any, **kwargs: Any):
        route_output_to_log()
        use_assigned_devices()
        use_planned_threads()
        return super().__new__(cls)

    def cuda_device(self) -> str | None:
        """The UUID of the GPU this actor computes on (its bundle's), or None on CPU; the weight
        sync checks these against the plan (rlhf_dist/weight_sync/controller.py `check_devices`)."""
        import torch

        # Only asked once the engines are up: it creates a CUDA context (vLLM forks its workers first).
        return str(torch.cuda.get_device_properties(0).uuid) if torch.cuda.is_available() else None

    def visible_devices(self) -> tuple[str | None, list]:
        """CUDA_VISIBLE_DEVICES as Ray set it, and Ray's GPU ids for this actor (tests)."""
        import ray

        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on (tests check it against the placement plan)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def threads(self) -> int:
        """The torch threads this actor computes with (tests check them against the placement plan)."""
        import torch

        return torch.get_num_threads()

    def rng_state(self) -> dict:
        """This actor's torch/numpy/python RNG states, for checkpoints."""
        return rng_state()

    def set_rng_state(self, state: dict) -> bool:
        set_rng_state(state)
        return True

    def pop_intervals(self) -> list[tuple[float, float]]:
        intervals, self._intervals = getattr(self, "_intervals", []), []
        return intervals


@contextlib.contextmanager
def building():
    """Around an actor's start-up (imports, engines, model loads): no automatic garbage collection,
    since each full collection walks the millions of objects that importing torch, transformers,
    DeepSpeed or vLLM makes, and those live as long as the process. After it, one collection frees
    whatever start-up left in cycles, and the survivors are frozen out of every later collection."""
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()


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
