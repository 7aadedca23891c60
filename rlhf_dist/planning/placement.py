"""Placement planning: which role gets which bundles on which node. Pure: no Ray here.

`plan_placement(cfg, nodes)` turns a config and the cluster's nodes into a `Plan`; `launch` then
creates one Ray placement group per `Group`, pins each bundle to the node the plan chose, and
starts every actor in its `Slot`. `rlhf-dist plan` prints `Plan.table()`.

Groups, placed in this order, each consuming the resources it takes:

- ``learner``: one bundle per rank ``{CPU: placement.learner.num_cpus, GPU: placement.learner.num_gpus}``;
  every rank of the DeepSpeed world stays in its bundle.
- ``rollout``: one bundle per vLLM engine with ``GPU: placement.rollout.num_gpus``, the GPUs of the
  whole engine (validation requires it to equal ``rollout.tensor_parallel_size`` when that is > 1),
  so a tensor-parallel group lives inside one bundle, on one node.
- ``reference`` and ``reward``: one bundle per worker.

Colocated (``placement.colocate``, GPU runs): rollout and learner share one group
``rollout+learner`` of ``learner.num_workers`` bundles ``{CPU: both roles' CPUs, GPU: 1}``. Learner
rank i and engine i both sit in bundle i, each asking for its share of that GPU
(``placement.learner.num_gpus`` and ``placement.rollout.num_gpus``, e.g. 0.5 each). This needs one
engine per learner rank and ``tensor_parallel_size=1`` (checked in config validation): an actor
lives in one bundle, so an engine cannot span the GPUs of several.

``placement.reference.colocate_with: learner_process`` plans no reference actors at all: every learner
rank holds the frozen reference and computes its own shard's log-probs.

Guests (``placement.reference.colocate_with: learner``, likewise reward; GPU runs): worker i of the
role joins learner rank i's bundle (of ``learner`` or ``rollout+learner``), its CPUs added to that
bundle and its ``num_gpus`` a share of the bundle's one GPU, like OpenRLHF's colocate-all. Every
actor computes on the GPUs of its own bundle only, or on CPU (`Plan.device`).

Strategies follow Ray's meaning: PACK puts a group's bundles on one node when one can hold them all,
else fills nodes greedily; SPREAD deals bundles round-robin over the nodes that fit; STRICT_PACK
needs one node; STRICT_SPREAD one node per bundle. Nodes are taken in order of (name, node id), so
the same cluster always gets the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_dist.config.placement import RoleResources
from rlhf_dist.config.schema import RunConfig
from rlhf_dist.errors import UserError
from rlhf_dist.planning.threads import plan_threads, thread_cap

ROLE_ORDER = ("learner", "rollout", "reference", "reward")
COLOCATED = "rollout+learner"
EPS = 1e-9


class PlacementError(UserError):
    """The cluster cannot hold the plan; the message says what is missing and what to change."""


@dataclass(frozen=True)
class NodeResources:
    """A node's schedulable CPUs and GPUs (free ones, when other work is already running)."""

    node_id: str
    cpus: float
    gpus: float
    name: str = ""
    gpu_gib: float = 0.0  # memory of each of its GPUs (rlhf_dist/planning/memory_plan.py); 0 = unknown

    @property
    def label(self) -> str:
        return self.name or self.node_id[:12]


@dataclass(frozen=True)
class Slot:
    """Where one actor runs: its group's bundle, that bundle's node, and what the actor asks for."""

    role: str  # learner | rollout | reference | reward
    index: int  # the actor's index in its role: learner-1 is ("learner", 1)
    group: str  # the Group's name
    bundle: int  # index into the group's bundles
    node_id: str
    num_cpus: float
    num_gpus: float

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


@dataclass
class Group:
    """One placement group: its bundles (Ray resource dicts) and the node each lands on."""

    name: str
    roles: tuple[str, ...]
    strategy: str
    bundles: list[dict[str, float]]
    nodes: list[str] = field(default_factory=list)  # node id per bundle

    @property
    def colocated(self) -> bool:
        return len(self.roles) > 1


@dataclass
class Plan:
    groups: list[Group]
    slots: list[Slot]
    nodes: list[NodeResources]
    reference_in_learners: bool = False  # the learner ranks compute the reference log-probs (learner_process)
    threads: dict[str, int] = field(default_factory=dict)  # torch/OpenMP threads per actor (planning/threads.py)

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)

    def slot(self, role: str, index: int) -> Slot:
        return next(s for s in self.slots if s.role == role and s.index == index)

    def role_slots(self, role: str) -> list[Slot]:
        return sorted((s for s in self.slots if s.role == role), key=lambda s: s.index)

    def device(self, slot: Slot) -> str:
        """The device actor ``slot`` computes on: its bundle's GPUs, which Ray makes the only ones it
        sees (so ``cuda:0`` is its own), or the CPU: an actor without GPUs sees none
        (``CUDA_VISIBLE_DEVICES=""``, actors/shell.py)."""
        if slot.num_gpus <= 0:
            return 'cpu (CUDA_VISIBLE_DEVICES="")'
        where = f"bundle {slot.bundle} of {slot.group} on node {self.node_label(slot.node_id)}"
        if slot.num_gpus < 1:
            others = [s.name for s in self.slots
                      if (s.group, s.bundle) == (slot.group, slot.bundle) and s != slot and s.num_gpus > 0]
            shared = f", shared with {_and(others)}" if others else ""
            return f"cuda:0 ({slot.num_gpus:g} of one GPU{shared}; {where})"
        n = int(round(slot.num_gpus))
        return f"{'cuda:0' if n == 1 else f'cuda:0-{n - 1}'} ({n} GPU{'s' * (n != 1)}; {where})"

    def threads_of(self, role: str, index: int) -> int:
        """The torch/OpenMP threads planned for actor ``role-index`` (1 if the plan has none)."""
        return self.threads.get(f"{role}-{index}", 1)

    def _threads(self, slot: Slot) -> str:
        n = self.threads.get(slot.name)
        return "" if n is None else f", {n} thread{'s' * (n != 1)}"

    def node_label(self, node_id: str) -> str:
        return next((n.label for n in self.nodes if n.node_id == node_id), node_id[:12])

    def table(self) -> str:
        """Each group, its bundles, the node each lands on and the actors in it; then the nodes."""
        labels = {n.node_id: n.label for n in self.nodes}
        lines = []
        for g in self.groups:
            kind = f"colocated: {_and(g.roles)} share each bundle" if g.colocated else "not colocated"
            lines.append(f"{g.name}  ({g.strategy}, {len(g.bundles)} bundle{'s' * (len(g.bundles) != 1)}, {kind})")
            for b, (bundle, node) in enumerate(zip(g.bundles, g.nodes)):
                actors = ", ".join(
                    f"{s.name} ({_fmt_res(s.num_cpus, s.num_gpus)})" for s in self.slots if s.group == g.name and s.bundle == b
                )
                lines.append(f"  bundle {b}  {_fmt_bundle(bundle):<18}  node {labels[node]:<12}  {actors}")
        lines.append("devices")
        for slot in sorted(self.slots, key=lambda s: (ROLE_ORDER.index(s.role), s.index)):
            lines.append(f"  {slot.name:<12}  {self.device(slot)}{self._threads(slot)}")
        if self.reference_in_learners:
            lines.append(f"  {'reference':<12}  in every learner rank, beside the policy (no reference actors)")
        lines.append("nodes")
        used = {n.node_id: [0.0, 0.0] for n in self.nodes}
        for g in self.groups:
            for bundle, node in zip(g.bundles, g.nodes):
                used[node][0] += bundle.get("CPU", 0.0)
                used[node][1] += bundle.get("GPU", 0.0)
        for n in self.nodes:
            cpu, gpu = used[n.node_id]
            lines.append(f"  {n.label:<12}  {n.node_id[:12]:<12}  CPU {cpu:g}/{n.cpus:g}  GPU {gpu:g}/{n.gpus:g} planned")
        return "\n".join(lines)


def plan_placement(cfg: RunConfig, nodes: list[NodeResources]) -> Plan:
    """Plan every role's placement group on ``nodes``; raises `PlacementError` when impossible."""
    nodes = sorted(nodes, key=lambda n: (n.name, n.node_id))
    if not nodes:
        raise PlacementError("placement impossible: the cluster has no alive nodes")
    free = {n.node_id: [n.cpus, n.gpus] for n in nodes}
    groups, slots = _groups(cfg)
    placed: list[Group] = []
    for group in groups:
        group.nodes = _place(group, nodes, free, placed, _fix_hint(cfg, group))
        for bundle, node in zip(group.bundles, group.nodes):
            free[node][0] -= bundle.get("CPU", 0.0)
            free[node][1] -= bundle.get("GPU", 0.0)
        placed.append(group)
    node_of = {(g.name, b): node for g in groups for b, node in enumerate(g.nodes)}
    slots = [
        Slot(s.role, s.index, s.group, s.bundle, node_of[(s.group, s.bundle)], s.num_cpus, s.num_gpus) for s in slots
    ]
    cores = {n.node_id: n.cpus for n in nodes}
    threads = plan_threads(slots, cores, overlapped=cfg.rollout.async_steps > 0, cap=thread_cap())
    return Plan(groups, slots, nodes, cfg.placement.reference_in_learners, threads)


# -- groups and slots -------------------------------------------------------------------------


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    # Ray rejects zero-valued entries in some versions; leave out what a bundle does not need.
    return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}


def _groups(cfg: RunConfig) -> tuple[list[Group], list[Slot]]:
    place, strategy = cfg.placement, cfg.placement.strategy
    counts = {
        "learner": cfg.learner.num_workers,
        "rollout": cfg.rollout.num_workers,
        "reference": 0 if place.reference_in_learners else cfg.reference.num_workers,
        "reward": cfg.reward.num_workers,
    }
    resources: dict[str, RoleResources] = {
        "learner": place.learner, "rollout": place.rollout, "reference": place.reference, "reward": place.reward,
    }
    groups: list[Group] = []
    slots: list[Slot] = []
    roles = [r for r in ROLE_ORDER if r in ("learner", "rollout") or (counts[r] and resources[r].colocate_with is None)]
    # In the learners' bundles (a reference held by the learner ranks has no workers: counts 0).
    guests = [r for r in ("reference", "reward") if counts[r] and resources[r].colocate_with == "learner"]
    if place.colocate or guests:
        _check_colocation(cfg, guests)
        hosts = ["learner", "rollout"] if place.colocate else ["learner"]
        name = COLOCATED if place.colocate else "learner"
        n = counts["learner"]
        cpus = [sum(resources[r].num_cpus for r in hosts + guests if i < counts[r]) for i in range(n)]
        # One whole GPU per bundle, shared by the roles' fractions (validation keeps their sum <= 1).
        groups.append(Group(name, tuple(hosts + guests), strategy, [_bundle(c, 1.0) for c in cpus]))
        for role in hosts + guests:
            res = resources[role]
            slots += [Slot(role, i, name, i, "", res.num_cpus, res.num_gpus) for i in range(counts[role])]
        roles = [r for r in roles if r not in hosts]
    for role in roles:
        res = resources[role]
        groups.append(Group(role, (role,), strategy, [_bundle(res.num_cpus, res.num_gpus) for _ in range(counts[role])]))
        slots += [Slot(role, i, role, i, "", res.num_cpus, res.num_gpus) for i in range(counts[role])]
    return groups, slots


def _check_colocation(cfg: RunConfig, guests: list[str]) -> None:
    """The planner's own guard; config validation reports the same problems earlier."""
    if cfg.placement.colocate and (
        cfg.rollout.tensor_parallel_size != 1 or cfg.rollout.num_workers != cfg.learner.num_workers
    ):
        raise PlacementError(
            "placement.colocate=true pairs one vLLM engine with each learner rank on one GPU: it needs "
            f"rollout.num_workers == learner.num_workers (got {cfg.rollout.num_workers} and "
            f"{cfg.learner.num_workers}) and rollout.tensor_parallel_size=1 (got {cfg.rollout.tensor_parallel_size})"
        )
    for role in guests:
        count = getattr(cfg, role).num_workers
        if count > cfg.learner.num_workers:
            raise PlacementError(
                f"placement.{role}.colocate_with=learner puts {role} worker i in learner rank i's bundle: "
                f"{role}.num_workers={count} must be <= learner.num_workers={cfg.learner.num_workers}"
            )


# -- placing one group ---------------------------------------------------------------------------


def _place(group: Group, nodes: list[NodeResources], free: dict[str, list[float]], placed: list[Group], fix: str) -> list[str]:
    """Node id per bundle of ``group``; checks totals, then one bundle's fit, then the strategy."""
    if not group.bundles:
        return []
    # A group's bundles are the same size, except where guests (reference, reward) join some learner bundles.
    bundle = max(group.bundles, key=lambda b: (b.get("GPU", 0.0), b.get("CPU", 0.0)))
    n = len(group.bundles)
    up_to = "up to " if any(b != bundle for b in group.bundles) else ""
    what = f"the {group.name} needs {n} bundle{'s' * (n != 1)} of {up_to}{_fmt_bundle(bundle)} ({group.strategy})"
    for key, unit, index in (("GPU", "GPU", 1), ("CPU", "CPU", 0)):
        need = sum(b.get(key, 0.0) for b in group.bundles)
        have = sum(free[node.node_id][index] for node in nodes)
        if need > have + EPS:
            total = sum(node.gpus if index else node.cpus for node in nodes)
            taken = f", {round(total - have, 6):g} of them planned for the {_names(placed)} first" if total - have > EPS else ""
            raise PlacementError(
                f"placement impossible: {what} = {need:g} {unit} but the cluster has {total:g} {unit} in total"
                f"{taken} ({_describe(nodes)}); {fix}"
            )
    if not any(_fits(bundle, free[node.node_id]) for node in nodes):
        raise PlacementError(
            f"placement impossible: {what}, but no node has a whole bundle free ({_describe(nodes, free)}); "
            f"a bundle must fit on one node: {fix}"
        )
    chosen = _by_strategy(group, nodes, {k: list(v) for k, v in free.items()})
    if chosen is None:
        rule = {
            "STRICT_PACK": "all bundles on one node",
            "STRICT_SPREAD": "every bundle on a different node",
        }.get(group.strategy, "")
        raise PlacementError(
            f"placement impossible: {what}: {group.strategy} puts {rule or 'them where they fit'}, and the nodes "
            f"cannot ({_describe(nodes, free)}); use placement.strategy=PACK or SPREAD, or {fix}"
        )
    return chosen


def _by_strategy(group: Group, nodes: list[NodeResources], free: dict[str, list[float]]) -> list[str] | None:
    bundles, strategy = group.bundles, group.strategy
    if strategy in ("PACK", "STRICT_PACK"):
        for node in nodes:
            if _fits(_sum(bundles), free[node.node_id]):
                return [node.node_id] * len(bundles)
        if strategy == "STRICT_PACK":
            return None
    chosen: list[str] = []
    for bundle in bundles:
        fitting = [node for node in nodes if _fits(bundle, free[node.node_id])]
        if strategy == "STRICT_SPREAD":
            fitting = [node for node in fitting if node.node_id not in chosen]
        if not fitting:
            return None
        if strategy == "PACK":  # fill the nodes this group already uses first
            node = next((n for n in fitting if n.node_id in chosen), fitting[0])
        else:  # SPREAD: the fitting node holding fewest of this group's bundles (round-robin)
            node = min(fitting, key=lambda n: chosen.count(n.node_id))
        chosen.append(node.node_id)
        free[node.node_id][0] -= bundle.get("CPU", 0.0)
        free[node.node_id][1] -= bundle.get("GPU", 0.0)
    return chosen


def _fits(bundle: dict[str, float], free: list[float]) -> bool:
    return bundle.get("CPU", 0.0) <= free[0] + EPS and bundle.get("GPU", 0.0) <= free[1] + EPS


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    return {key: sum(b.get(key, 0.0) for b in bundles) for key in ("CPU", "GPU")}


# -- messages ------------------------------------------------------------------------------------


def _fix_hint(cfg: RunConfig, group: Group) -> str:
    if group.colocated:
        paired = "and rollout.num_workers (one engine per learner rank)" if "rollout" in group.roles else (
            "(the roles colocated with it follow)")
        return f"lower learner.num_workers {paired}, or add GPU nodes"
    role = group.name
    count = {"learner": "learner.num_workers", "rollout": "rollout.num_workers",
             "reference": "reference.num_workers", "reward": "reward.num_workers"}[role]
    gpus = f"placement.{role}.num_gpus"
    if role == "rollout" and cfg.rollout.tensor_parallel_size > 1:
        gpus += " (with rollout.tensor_parallel_size)"
    needs_gpu = group.bundles and group.bundles[0].get("GPU", 0.0) > 0
    more = "add GPU nodes" if needs_gpu else "add nodes or CPUs"
    return f"lower {count}, {gpus} or placement.{role}.num_cpus, or {more}"


def _fmt_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def _fmt_res(cpus: float, gpus: float) -> str:
    return f"CPU {cpus:g}" + (f", GPU {gpus:g}" if gpus else "")


def _describe(nodes: list[NodeResources], free: dict[str, list[float]] | None = None) -> str:
    if free is None:
        return "; ".join(f"node {n.label}: {n.cpus:g} CPU, {n.gpus:g} GPU" for n in nodes)
    return "; ".join(
        f"node {n.label}: {round(free[n.node_id][0], 6):g} of {n.cpus:g} CPU, "
        f"{round(free[n.node_id][1], 6):g} of {n.gpus:g} GPU free"
        for n in nodes
    )


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _names(groups: list[Group]) -> str:
    return ", ".join(g.name for g in groups) or "nothing"


def plan_world(count: int, res: RoleResources, strategy: str, nodes: list[NodeResources]) -> Plan:
    """The plan of one DeepSpeed world alone, ``count`` ranks of role ``learner`` (a supervised stage):
    the same bundles, strategies and checks as the RL learners' group."""
    nodes = sorted(nodes, key=lambda n: (n.name, n.node_id))
    if not nodes:
        raise PlacementError("placement impossible: the cluster has no alive nodes")
    group = Group("learner", ("learner",), strategy, [_bundle(res.num_cpus, res.num_gpus) for _ in range(count)])
    free = {n.node_id: [n.cpus, n.gpus] for n in nodes}
    fix = ("lower learner.num_workers, placement.learner.num_gpus or placement.learner.num_cpus, or add "
           + ("GPU nodes" if res.num_gpus > 0 else "nodes or CPUs"))
    group.nodes = _place(group, nodes, free, [], fix)
    slots = [Slot("learner", i, group.name, i, node, res.num_cpus, res.num_gpus) for i, node in enumerate(group.nodes)]
    threads = plan_threads(slots, {n.node_id: n.cpus for n in nodes}, overlapped=False, cap=thread_cap())
    return Plan([group], slots, nodes, threads=threads)
