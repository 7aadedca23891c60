"""Reading a cluster's nodes for the placement planner: a live Ray, a head's state API, this
machine, or a written-out `--nodes` spec.

Nodes are described by their total CPUs and GPUs (what Ray declares for them); a cluster busy with
other work is caught when the placement groups do not become ready.
"""

from __future__ import annotations

import math
import os

from launch.ray_auth import auth_headers
from rlhf_dist.config import RunConfig
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.errors import UserError
from rlhf_dist.planning.memory_formulas import DEFAULT_GPU_GIB
from rlhf_dist.planning.placement import NodeResources

HEAD_RESOURCE = "node:__internal_head__"


def _node_name(node_id: str, ip: str, is_head: bool) -> str:
    # Several raylets can share an IP (ray.cluster_utils.Cluster, or two nodes in one VM).
    return "head" if is_head else f"{ip}/{node_id[:6]}"


def live_nodes() -> list[NodeResources]:
    """The alive nodes of the cluster this process is connected to (``ray.init`` done)."""
    import ray

    return [
        NodeResources(
            n["NodeID"],
            float(n["Resources"].get("CPU", 0.0)),
            float(n["Resources"].get("GPU", 0.0)),
            _node_name(n["NodeID"], n.get("NodeManagerAddress", "?"), HEAD_RESOURCE in n["Resources"]),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def with_gpu_memory(nodes: list[NodeResources], timeout_s: float = 60.0) -> list[NodeResources]:
    """``nodes`` of the connected cluster with ``gpu_gib`` read by a probe task on each GPU node
    (``torch.cuda.get_device_properties``); a node that does not answer keeps 0 (unknown)."""
    import dataclasses

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, num_gpus=0)  # asks for nothing, so a busy node still answers; sees every GPU
    def device_gib() -> float:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0

    gpu_nodes = [n for n in nodes if n.gpus > 0]
    refs = [device_gib.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote()
            for n in gpu_nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    found = {n.node_id: ray.get(r) for n, r in zip(gpu_nodes, refs) if r in ready}
    return [dataclasses.replace(n, gpu_gib=found.get(n.node_id, 0.0)) for n in nodes]


def state_api_nodes(address: str, token: str | None = None) -> list[NodeResources]:
    """The alive nodes of the cluster whose dashboard is at ``address`` (http://HEAD:8265),
    through Ray's state API, without joining the cluster (auth token as for `submit`)."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource


    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address {address!r} must be the dashboard URL, e.g. http://127.0.0.1:8265")
    try:
        client = StateApiClient(address=address, headers={"Content-Type": "application/json", **(auth_headers(token) or {})})
        options = ListApiOptions(limit=10_000, timeout=30, filters=[("state", "=", "ALIVE")])
        states = client.list(StateResource.NODES, options=options, raise_on_missing_output=False)
    except Exception as exc:  # Ray raises ConnectionError, RayStateApiException or others
        reason = str(exc).split(". ")[0]  # Ray's messages run on for several sentences
        raise UserError(
            f"cannot read the nodes of the cluster at {address} ({reason}). Is a head running there, and is "
            "the port its dashboard port (8265)?"
        ) from None
    return [
        NodeResources(
            s.node_id,
            float(s.resources_total.get("CPU", 0.0)),
            float(s.resources_total.get("GPU", 0.0)),
            _node_name(s.node_id, s.node_ip, bool(s.is_head_node)),
        )
        for s in states
    ]


def local_nodes(cfg: RunConfig) -> list[NodeResources]:
    """This machine as `rlhf-dist train` would declare it to a local Ray (launch.roles.start_ray)."""
    import torch

    cpus = max(os.cpu_count() or 1, math.ceil(required_cpus(cfg)))
    gpus = torch.cuda.device_count()
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpus else 0.0
    return [NodeResources("local", float(cpus), float(gpus), "local", gib)]


def required_cpus(cfg: RunConfig | StageConfig) -> float:
    """CPUs that the actors of a run (or of a stage's DeepSpeed world) ask for, all together."""
    p = cfg.placement
    if isinstance(cfg, StageConfig):
        return cfg.learner.num_workers * p.learner.num_cpus
    return (
        cfg.rollout.num_workers * p.rollout.num_cpus
        + cfg.reward.num_workers * p.reward.num_cpus
        + (0 if p.reference_in_learners else cfg.reference.num_workers * p.reference.num_cpus)
        + cfg.learner.num_workers * p.learner.num_cpus
    )


def parse_nodes(spec: str) -> list[NodeResources]:
    """``NAME:CPUS:GPUS[:GPU_GIB][,...]`` (e.g. ``head:8:0,gpu1:32:8:40``) -> nodes, for dry runs; GPU_GIB,
    the memory of each GPU, defaults to 80."""
    nodes = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        try:
            name, cpus, gpus = parts[0], float(parts[1]), float(parts[2])
            gib = float(parts[3]) if len(parts) == 4 else DEFAULT_GPU_GIB
            if len(parts) not in (3, 4) or not name or cpus < 0 or gpus < 0 or gib <= 0:
                raise ValueError
        except (IndexError, ValueError):
            raise UserError(
                f"--nodes: cannot read {item!r}; write NAME:CPUS:GPUS per node (or NAME:CPUS:GPUS:GPU_GIB, the memory "
                "of each GPU, default 80), comma-separated, e.g. head:8:0,gpu1:32:8:80"
            ) from None
        nodes.append(NodeResources(name, cpus, gpus, name, gib if gpus > 0 else 0.0))
    if len({n.name for n in nodes}) != len(nodes):
        raise UserError(f"--nodes: node names must be distinct, got {spec!r}")
    return nodes
