"""Failure that belongs to one trajectory: retries with a fresh env, error records, dropped groups,
and the error budget of a step.

A trajectory whose env raised, timed out or ran out of time (`trajectory.EnvFailure`) is played
again with a fresh env, ``retries`` times; each failed attempt is one record for
``RUN_DIR/rollout_errors.jsonl`` (CONTRACTS: step, prompt_index, sample_index, attempt, turn, phase,
error, traceback, transcript, seconds). A sample that still fails takes its whole group out of the
batch, since a partial group biases the group baseline; a failed trajectory is never scored. Past
``max_error_frac`` of a step's trajectories, or when every trajectory of the first step fails, the
run stops (`RolloutFailures`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rlhf_dist.rollout.trajectory import EnvFailure, Trajectory


def env_seed(run_seed: int, step: int, prompt_index: int, sample_index: int, attempt: int) -> int:
    """``self.seed`` of an env: fixed by (run, step, prompt, sample, attempt), so reruns and resumes
    meet the same env, and a retry a fresh one."""
    key = f"env/{run_seed}/{step}/{prompt_index}/{sample_index}/{attempt}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


def make_env(cls: type, row: dict, env_args: dict, seed: int) -> Any:
    """One trajectory's env: ``cls(row, **env_args)`` with ``seed`` set before ``reset()``."""
    env = cls(dict(row), **env_args)
    env.seed = seed
    return env


@dataclass
class Outcome:
    """A sample after its attempts: the trajectory (None when every attempt failed) and the records
    of the failed attempts."""

    trajectory: Trajectory | None
    errors: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.trajectory is None


def play_sample(play: Callable[[int], Trajectory], where: dict[str, int], retries: int) -> Outcome:
    """``play(attempt)`` until one attempt finishes, at most ``1 + retries`` times. ``where`` holds the
    step, prompt_index and sample_index for the records."""
    errors: list[dict] = []
    for attempt in range(retries + 1):
        started = time.monotonic()
        try:
            return Outcome(play(attempt), errors)
        except EnvFailure as failure:
            errors.append(error_record(where, attempt, failure, time.monotonic() - started))
    return Outcome(None, errors)


def error_record(where: dict[str, int], attempt: int, failure: EnvFailure, seconds: float) -> dict:
    transcript = failure.trajectory.transcript if failure.trajectory is not None else []
    return {
        **where, "attempt": attempt, "turn": failure.turn, "phase": failure.phase,
        # an isolated env's error names the exception raised in its process (``kind``, ``message``)
        "error": {"type": getattr(failure.error, "kind", type(failure.error).__name__),
                  "message": getattr(failure.error, "message", str(failure.error))},
        "traceback": failure.trace, "transcript": transcript, "seconds": round(seconds, 3),
    }


class RolloutFailures(Exception):
    """Too many trajectories of a step failed for the step to mean anything: the run stops."""


class Attempted(Protocol):
    """A sample after its attempts, as far as the error budget cares: an `Outcome` here, a sample's
    `TurnInfo` on the driver."""

    @property
    def failed(self) -> bool: ...

    errors: list[dict]


def kept_groups(groups: list[list[Attempted]]) -> list[int]:
    """The groups every sample of which finished (a group with a failed sample is dropped whole)."""
    return [g for g, outcomes in enumerate(groups) if not any(o.failed for o in outcomes)]


def check_error_budget(groups: list[list[Attempted]], max_error_frac: float, first_step: bool, env_name: str,
                       errors_file: str) -> None:
    """Raise `RolloutFailures` (one paragraph: the env, the exception, the first failing trajectory and
    the errors file) when the step's failed share passes ``max_error_frac``, or when every trajectory
    of the first step failed."""
    outcomes = [o for group in groups for o in group]
    failed = [o for o in outcomes if o.failed]
    if not failed or (len(failed) / len(outcomes) <= max_error_frac and not (first_step and len(failed) == len(outcomes))):
        return
    first = failed[0].errors[-1]
    raise RolloutFailures(
        f"{len(failed)} of {len(outcomes)} trajectories failed at step {first['step']} (more than "
        f"rollout.multi_turn.errors.max_error_frac={max_error_frac:g}{', and it is the first step' if first_step else ''}). "
        f"The env {env_name} raised {first['error']['type']}: {first['error']['message']} in {first['phase']} at turn "
        f"{first['turn']} of prompt {first['prompt_index']}, sample {first['sample_index']}; every failed attempt is "
        f"in {errors_file}"
    )
