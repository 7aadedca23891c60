"""Calling actors: the handles of a run per role, gathering remote results, and the errors a
remote call can end in.

The driver never sees a Ray exception: `gather` turns a raising method into `ActorFailed` and a
dead process into `ActorDied`, each naming the role, so the loop can decide what to redo and the
user reads which part of the run broke.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import ray
import torch

from rlhf_dist.rewards import RewardResult
from rlhf_dist.rewards.functions import Extras

if TYPE_CHECKING:
    from rlhf_dist.planning.placement import Plan

T = TypeVar("T")


class ActorFailed(RuntimeError):
    """A remote call failed; the message names the role."""


class ActorDied(ActorFailed):
    """An actor's process died (as opposed to its method raising)."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and how to continue (usually ``--resume``)."""


@dataclass
class Roles:
    """Actor handles per role, as built by `launch`."""

    rollout: list[Any]
    reward: list[Any]
    reference: list[Any]
    learners: list[Any]
    placement_groups: list[Any] = field(default_factory=list)  # removed with the actors
    plan: Plan | None = None  # where each actor was placed; the weight sync reads who shares a GPU
    reference_in_learners: bool = False  # no reference actors: the learner ranks answer `reference_logprobs`

    def all(self) -> list[Any]:
        return [*self.rollout, *self.reward, *self.reference, *self.learners]

    def reference_workers(self) -> list[Any]:
        """The handles that answer ``reference_logprobs``: the reference actors, or the learner ranks."""
        return self.learners if self.reference_in_learners else self.reference

    def restartable(self) -> list[tuple[str, list[Any]]]:
        """The roles Ray restarts after a death (a learner cannot rejoin its DeepSpeed world)."""
        return [("rollout", self.rollout), ("reward", self.reward), ("reference", self.reference)]


def gather(refs: list[Any], role: str) -> list[Any]:
    """``ray.get`` on a list, naming the role when a remote call raised. An answer that is not an
    ``ObjectRef`` was computed in-process (a role that is a plain object, as the tests' fakes are) and
    passes through as it is."""
    remote = [i for i, ref in enumerate(refs) if isinstance(ref, ray.ObjectRef)]
    if not remote:
        return list(refs)
    try:
        # Fail as soon as any call fails: the other calls may be waiting on the failed one (a
        # collective with a dead rank) and would never return.
        pending = [refs[i] for i in remote]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        answers = list(refs)
        for i, value in zip(remote, ray.get([refs[i] for i in remote])):
            answers[i] = value
        return answers
    except ray.exceptions.RayTaskError as exc:
        raise ActorFailed(f"{role} failed: {exc.cause if exc.cause is not None else exc}") from exc
    except ray.exceptions.RayActorError as exc:
        raise ActorDied(role, f"{role} actor died: {exc}") from exc


class RankGroup:
    """The ranks of one DeepSpeed world, called as one: every rank at once (their forward and backward
    passes are collectives), each with its part, the answers gathered in rank order. Calls are typed
    lambdas over the handle (``lambda rank, shard: rank.train.remote(shard)``), never method names."""

    def __init__(self, ranks: list[Any], role: str):
        self.ranks, self.role = list(ranks), role

    def __len__(self) -> int:
        return len(self.ranks)

    def map(self, call: Callable[[Any, T], Any], parts: Sequence[T], role: str | None = None) -> list[Any]:
        """``call(rank, part)`` for each rank and its part (one part per rank), gathered."""
        assert len(parts) == len(self.ranks), f"{len(parts)} parts for {len(self.ranks)} ranks"
        return gather([call(rank, part) for rank, part in zip(self.ranks, parts)], role or self.role)

    def all(self, call: Callable[[Any], Any], role: str | None = None) -> list[Any]:
        """``call(rank)`` on every rank, gathered."""
        return gather([call(rank) for rank in self.ranks], role or self.role)


def wait_until_alive(actor: Any, role: str, timeout_s: float = 600.0) -> None:
    """Block until a restarting actor answers. While Ray restarts it, calls fail fast with
    ``ActorUnavailableError``; once it is out of restarts they fail with ``ActorDiedError``."""
    deadline = time.time() + timeout_s
    while True:
        try:
            ray.get(actor.ready.remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.time() > deadline:
                raise ActorDied(role, f"{role} actor did not come back within {timeout_s:.0f}s of a restart") from None
            time.sleep(0.5)
        except ray.exceptions.RayActorError as exc:
            raise ActorDied(role, f"{role} actor died and was not restarted: {exc}") from exc


def shard_sizes(total: int, workers: int) -> list[int]:
    """Sizes of ``workers`` contiguous shards of ``total`` items, as even as possible (the first
    ``total % workers`` shards get one more); a worker may get 0 when there are fewer items."""
    base, extra = divmod(total, workers)
    return [base + (i < extra) for i in range(workers)]


def shards(items: list[T], workers: int) -> list[list[T]]:
    """``items`` cut into ``workers`` contiguous shards of `shard_sizes`, every worker getting its part."""
    out, start = [], 0
    for size in shard_sizes(len(items), workers):
        out.append(items[start : start + size])
        start += size
    return out


def generate_on(generators: list[Any], requests: list[Any], sampling: Any, role: str = "rollout",
                step: int = 0) -> list[Any]:
    """Sample every request on the generators (play its trajectory, in a multi-turn run: ``step``
    seeds the envs); returns the samples in request order.

    Requests are dealt round-robin, so a prompt's samples (adjacent requests) spread over the
    engines when there are several, and each engine's batch stays full.
    """
    per_worker = [requests[w :: len(generators)] for w in range(len(generators))]
    results = gather([g.generate.remote(reqs, sampling, step) for g, reqs in zip(generators, per_worker) if reqs], role)
    by_key = {(s.prompt_index, s.sample_index): s for part in results for s in part}
    return [by_key[(r.prompt_index, r.sample_index)] for r in requests]


def score_on(scorers: list[Any], prompts: list[str], responses: list[str], columns: dict[str, list],
             role: str = "reward scorer", extras: Extras | None = None):
    """Score (prompt, response) pairs sharded over the scorers, each shard with its rows' columns
    (and its part of ``extras``); returns one `RewardResult` for the whole batch, in order."""
    calls, start = [], 0
    for scorer, size in zip(scorers, shard_sizes(len(prompts), len(scorers))):
        if size:
            stop = start + size
            part = {name: values[start:stop] for name, values in columns.items()}
            shard_extras = None if extras is None else extras.part(start, stop)
            calls.append(scorer.score.remote(prompts[start:stop], responses[start:stop], part, shard_extras))
        start += size
    results = gather(calls, role)
    return RewardResult(
        total=torch.cat([r.total for r in results]).float(),
        components={k: torch.cat([r.components[k] for r in results]) for k in results[0].components},
        gold=torch.cat([r.gold for r in results]) if results[0].gold is not None else None,
    )
