"""Is the run directory shared by every node? Checked before a multi-node run writes anything.

Checkpoint shards are written by the learner ranks on their own nodes and read back by a resume
from wherever the driver runs, and a tiny model built by the driver is loaded by actors on every
node: all of it works only if every node sees the same run directory. The check writes a probe file
from the driver, then runs one task pinned to each alive node that looks for it (and for its
content, so a stale file from an earlier probe cannot pass). The decision is a pure function of the
per-node views; the unit tests inject those views, the integration test gives one node of a real
cluster its own mount namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launch.cluster import live_nodes
from rlhf_dist.errors import UserError

PROBE_PREFIX = ".rlhf-dist-probe-"
STORAGE_ENV = "RLHF_DIST_STORAGE"  # the cluster's shared root for run dirs (cluster.yaml sets it)
PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class NodeView:
    """What one node saw when it looked for the probe file the driver wrote."""

    node: str  # the node's name in messages: "head" or "IP/node-id-prefix" (launch.cluster)
    sees_probe: bool  # the file is there with the driver's content
    detail: str = ""  # why not, when it does not: "no such file", "other content", "no answer in 120 s"


def shared_dir_problem(run_dir: Path, views: list[NodeView]) -> str | None:
    """Why ``run_dir`` cannot serve a run on these nodes, or None when it can.

    One node (or none) needs nothing shared. On several, the dir must be absolute (a relative one
    names a different place in each process's working directory) and every node must see the probe.
    """
    if len(views) <= 1:
        return None
    fix = (f"put it on storage mounted on every node at the same path (cluster.yaml mounts one at /mnt/shared and sets "
           f"${STORAGE_ENV}=/mnt/shared/rlhf-dist), e.g. --run-dir /mnt/shared/rlhf-dist/NAME")
    if not run_dir.is_absolute():
        return (f"run dir {str(run_dir)!r} is relative, and this Ray cluster has {len(views)} nodes: each node would "
                f"resolve it in its own working directory, so checkpoints and models would scatter; {fix}")
    blind = [v for v in views if not v.sees_probe]
    if not blind:
        return None
    seen = ", ".join(f"{v.node} ({v.detail})" if v.detail else v.node for v in blind)
    return (f"run dir {run_dir} is not shared by all {len(views)} nodes of this Ray cluster: a file written there "
            f"from the driver is not seen by {seen}; checkpoint shards would land on each node's own disk and a "
            f"resume could not find them; {fix}")


def check_shared_run_dir(run_dir: Path, look: Callable[[str, str], tuple[bool, str]] | None = None) -> None:
    """Raise `UserError` with the reason when the connected Ray cluster has more than one alive node and
    ``run_dir`` is relative or not seen by every node; do nothing on one node. Call it after ``ray.init``.

    Creates ``run_dir`` (an empty directory is what a new run starts in) and removes its probe file;
    when the check fails, the directories it created are removed again. ``look(path, content) ->
    (seen, detail)`` runs on each node (default `look_for_probe`); tests may give their own.
    """
    nodes = _alive_nodes()
    if len(nodes) <= 1 or not run_dir.is_absolute():
        problem = shared_dir_problem(run_dir, [NodeView(name, True) for _, name in nodes])
        if problem:
            raise UserError(problem)
        return
    created = _missing_parents(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run dir {run_dir}: {exc.strerror or exc}; give a writable --run-dir") from None
    token = uuid.uuid4().hex
    probe = run_dir / f"{PROBE_PREFIX}{token}"
    try:
        probe.write_text(token)
        views = _views_from_every_node(nodes, str(probe), token, look or look_for_probe)
    finally:
        probe.unlink(missing_ok=True)
    problem = shared_dir_problem(run_dir, views)
    if problem:
        for path in created:  # deepest first; only if still empty
            try:
                path.rmdir()
            except OSError:
                break
        raise UserError(problem)


def look_for_probe(path: str, content: str) -> tuple[bool, str]:
    """On one node: is the probe file there, with the driver's content?"""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        parent = Path(path).parent
        return False, "no such file" if parent.is_dir() else f"no directory {parent}"
    except OSError as exc:
        return False, f"cannot read it: {exc.strerror or exc}"
    return (True, "") if text == content else (False, "another file with that name")


def _alive_nodes() -> list[tuple[str, str]]:
    """(node id, name) of every alive node of the connected cluster."""
    return [(n.node_id, n.name) for n in live_nodes()]


def _views_from_every_node(nodes: list[tuple[str, str]], path: str, content: str,
                           look: Callable[[str, str], tuple[bool, str]]) -> list[NodeView]:
    """One zero-CPU task pinned to each node (hard affinity) runs ``look``; a node that does not
    answer within PROBE_TIMEOUT_S counts as not seeing the file."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(look)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                         name=f"rlhf-dist storage probe on {name}").remote(path, content)
            for node_id, name in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    views = []
    for ref, (_, name) in zip(refs, nodes):
        if ref not in ready:
            views.append(NodeView(name, False, f"no answer in {PROBE_TIMEOUT_S:.0f} s"))
            ray.cancel(ref, force=True)
            continue
        try:
            seen, detail = ray.get(ref)
        except Exception as exc:  # the node died, or its worker could not start
            seen, detail = False, f"the probe failed there: {type(exc).__name__}"
        views.append(NodeView(name, seen, detail))
    return views


def _missing_parents(run_dir: Path) -> list[Path]:
    """The directories ``mkdir(parents=True)`` would create for ``run_dir``, deepest first."""
    missing, path = [], run_dir
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing
