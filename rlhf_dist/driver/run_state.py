"""The driver's state in a checkpoint: what the loop itself carries between steps, and writing or
restoring a whole run checkpoint (the learners' DeepSpeed state, every actor's RNG, this state).

A run checkpoint ``RUN_DIR/checkpoints/step-NNNNNN`` holds:

    learner-*/                the learners' DeepSpeed state (policy, critic, optimizer, scheduler)
    rng/driver.safetensors    the driver's torch/numpy/python RNG
    rng/<role>-<i>.safetensors  the RNG of every rollout, reward and reference actor
    pending/step-N.*          async: the batches produced ahead (tokens, log-probs, versions, scores)
    driver_state.json         `LoopState` + counts; written last, so its presence marks the whole
    manifest.json             every file's size and sha256 (rlhf_dist/checkpoints/manifest.py), checked on resume
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_dist.checkpoints.files import (
    CheckpointError,
    load_tree,
    rng_state,
    save_tree,
    set_rng_state,
    write_checkpoint,
    write_json,
)
from rlhf_dist.driver.remote_calls import ActorFailed, Roles, gather


@dataclass
class LoopState:
    """What the driver carries from step to step besides the actors' state. Each part has its own
    ``state_dict``/``load_state_dict`` (the KL controller, the prompt sampler, the hacking monitor,
    the collapse and no-signal alarms)."""

    kl_ctl: Any
    sampler: Any
    monitor: Any
    health: Any = None
    policy_version: int = 0
    counters: dict[str, float] = field(default_factory=lambda: {"faults/actor_restarts": 0, "train/skipped_steps": 0})
    nonfinite_in_a_row: int = 0

    def state_dict(self, steps_done: int, roles: Roles) -> dict:
        return {
            "steps_done": steps_done,
            "policy_version": self.policy_version,
            "kl_controller": self.kl_ctl.state_dict(),
            "sampler": self.sampler.state_dict(),
            "monitor": self.monitor.state_dict(),
            "health": self.health.state_dict() if self.health is not None else {},
            "counters": dict(self.counters),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "num_generators": len(roles.rollout),
            "num_learners": len(roles.learners),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore; returns the number of steps done (the step to continue from)."""
        self.policy_version = state["policy_version"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.sampler.load_state_dict(state["sampler"])
        self.monitor.load_state_dict(state["monitor"])
        if self.health is not None:
            self.health.load_state_dict(state.get("health", {}))  # checkpoints from before the alarms: none
        self.counters.update(state["counters"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        return state["steps_done"]


def save_run_checkpoint(
    run_dir: Path, steps_done: int, keep_last: int, state: LoopState, roles: Roles,
    call: Callable[[Callable[[], Any]], Any] = lambda work: work(),
    also: Callable[[Path], list] = lambda tmp: [],
) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically; on failure the previous one stays as it was.

    ``call`` wraps each remote phase (the driver passes its restart-and-redo wrapper, so a reward
    actor that dies while its RNG is read is restarted rather than failing the checkpoint); ``also``
    writes more of the driver's files (the batches produced ahead, async) and returns their digests.
    """

    def write(tmp: Path) -> list:  # the digests of the driver's files, for the manifest
        gather([l.save_checkpoint.remote(str(tmp)) for l in roles.learners], "learner (checkpoint)")
        (tmp / "rng").mkdir(exist_ok=True)
        digests = [save_tree(rng_state(), tmp / "rng" / "driver.safetensors")]
        for role, actors in roles.restartable():
            states = call(lambda: gather([a.rng_state.remote() for a in actors], role))
            for i, rng in enumerate(states):
                digests.append(save_tree(rng, tmp / "rng" / f"{role}-{i}.safetensors"))
        digests.extend(also(tmp))
        digests.append(write_json(tmp / "driver_state.json", state.state_dict(steps_done, roles)))  # last
        return digests

    return write_checkpoint(run_dir, steps_done, keep_last, write, (OSError, ActorFailed))


def restore_run_checkpoint(ckpt: Path, state: LoopState, roles: Roles) -> int:
    """Load a checkpoint into ``state`` and every actor; returns the step to continue from."""
    saved = json.loads((ckpt / "driver_state.json").read_text())
    if saved["num_learners"] != len(roles.learners):
        raise CheckpointError(
            f"{ckpt} was written by {saved['num_learners']} learners, this run has {len(roles.learners)}; "
            "resume with the same learner.num_workers (ZeRO partitions are per rank)"
        )
    gather([l.load_checkpoint.remote(str(ckpt)) for l in roles.learners], "learner (load checkpoint)")
    set_rng_state(load_tree(ckpt / "rng" / "driver.safetensors"))
    for role, actors in roles.restartable():
        for i, actor in enumerate(actors):
            path = ckpt / "rng" / f"{role}-{i}.safetensors"
            if path.exists():
                gather([actor.set_rng_state.remote(load_tree(path))], role)
    return state.load_state_dict(saved)
