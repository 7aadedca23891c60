"""Starting Ray, and starting actors where the placement plan puts them: every role of an RL run
(`build_roles`), and every DeepSpeed world, the RL learners' and a supervised stage's (`start_world`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import NODE_ID_LABEL_KEY, PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.learner import Learner
from actors.reference import ReferenceActor
from actors.reward import RewardScorer
from actors.rollout import RolloutWorker
from actors.shell import ACTOR_ENV, actor_env
from launch import console
from launch.cluster import live_nodes, required_cpus
from rlhf_dist.config import RunConfig
from rlhf_dist.config.placement import RoleResources
from rlhf_dist.driver.remote_calls import Roles, gather
from rlhf_dist.errors import UserError
from rlhf_dist.models.reference import ReferenceSpec
from rlhf_dist.planning.placement import PlacementError, Plan, plan_placement
from rlhf_dist.rollout.multi_turn import MultiTurnSpec
from rlhf_dist.rollout.spec import EngineSpec

NAMESPACE = "rlhf-dist"
PLACEMENT_TIMEOUT_S = 120.0


def start_ray(cfg: RunConfig) -> bool:
    """Join the cluster named by RAY_ADDRESS (a submitted job), else start a fresh local one.

    Returns True when this call started Ray (so the caller shuts it down).
    """
    return start_ray_cpus(required_cpus(cfg))


def start_ray_cpus(needed_cpus: float) -> bool:
    """`start_ray` for a known CPU need; a local cluster gets at least all cores."""
    import math

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": actor_env()}
    # Inside console.logs_to every actor writes its own log file; Ray's copy on the terminal would repeat it.
    to_driver = not console.routing()
    if address:
        with console.phase(f"joined the Ray cluster at {address}"):
            _init_ray(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=to_driver)
    else:
        with console.phase("starting Ray"):
            _init_ray(
                address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(needed_cpus)), include_dashboard=False,
                namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=to_driver,
            )
    console.install_signal_handlers()  # ray.init replaced the SIGTERM handler
    return True


def _init_ray(**options) -> None:
    """``ray.init``, tried twice: on a loaded machine a local start can time out waiting for its
    own processes, and a second try usually succeeds. Then one clear line, not Ray's traceback."""
    for attempt in (1, 2):
        try:
            ray.init(**options)
            return
        except Exception as exc:
            ray.shutdown()  # whatever the failed start left running
            if attempt == 2:
                reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                if options["address"] == "local":
                    raise UserError(f"Ray did not start (tried twice: {reason}); the machine may be overloaded: "
                                    "free some CPU or memory and run again") from exc
                raise UserError(f"could not join the Ray cluster at RAY_ADDRESS={options['address']} (tried twice: "
                                f"{reason}); is its head running (`ray status`)? Or unset RAY_ADDRESS") from exc


def local_ray_stopped() -> list[str]:
    """The processes of the local Ray this process started that are gone (`ray stop` from another
    shell, or killed); empty while it lives, or when this process joined a cluster instead."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return []
    try:
        return sorted({name for name, _ in node.dead_processes()})
    except Exception:  # Ray's internals moved: say nothing rather than guess
        return []


class LocalRayWatch:
    """Watches the local Ray this process started, once a second, from a daemon thread: when its
    processes are gone (`ray stop` from another shell), ``on_gone(names)`` runs at once. Ray's own
    reaction is to abort the process after a minute without its GCS, with a C++ log line; this says
    what happened first."""

    def __init__(self, on_gone: Callable[[list[str]], None], every_s: float = 1.0):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(on_gone, every_s), name="local-ray-watch", daemon=True)
        self._thread.start()

    def _watch(self, on_gone: Callable[[list[str]], None], every_s: float) -> None:
        while not self._stop.wait(every_s):
            gone = local_ray_stopped()
            if gone and not self._stop.is_set():
                on_gone(gone)
                return

    def stop(self) -> None:
        """Stop watching (before our own shutdown stops those processes)."""
        self._stop.set()


def stop_roles(roles: Roles | None, shutdown: bool) -> None:
    """Kill the run's actors (their names free up for the next run) and Ray if we started it. A
    second Ctrl-C or SIGTERM while this runs does not cut it short: the line that says where the
    run stopped, and how to resume it, must still come."""
    try:
        if roles is not None:
            release(roles.all(), roles.placement_groups)
        if shutdown:
            ray.shutdown()
    except KeyboardInterrupt:
        if shutdown:
            ray.shutdown()


def release(actors: list[Any], groups: list[PlacementGroup]) -> None:
    """Kill ``actors`` and remove the placement groups that held them."""
    for actor in actors:
        ray.kill(actor)
    for group in groups:
        remove_placement_group(group)


def _options(name: str, res: RoleResources, threads: int, restarts: int = 0) -> dict:
    """Actor options: its resources, and its planned threads (OMP_NUM_THREADS, which torch and vLLM
    read as they start). ``restarts``: how often Ray restarts a dead actor. Its failed calls are not
    retried by Ray (``max_task_retries=0``): the driver re-syncs weights first, then redoes them."""
    options = {
        "name": name, "num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_concurrency": 1,
        "max_restarts": restarts, "max_task_retries": 0,
    }
    runtime_env = console.actor_runtime_env(name) or {}  # its output to RUN_DIR/logs/<name>.log
    if threads != int(ACTOR_ENV["OMP_NUM_THREADS"]):
        # Ray merges these with the job's. Left out when the job's value holds: an actor without a
        # runtime_env of its own can start in one of the workers Ray keeps ready.
        runtime_env.setdefault("env_vars", {})["OMP_NUM_THREADS"] = str(threads)
    return options | ({"runtime_env": runtime_env} if runtime_env else {})


def reserve(plan: Plan, timeout_s: float = PLACEMENT_TIMEOUT_S) -> dict[str, PlacementGroup]:
    """One placement group per planned group, each bundle pinned to the node the plan chose (a
    node-id label selector), ready within ``timeout_s``; on failure none is left behind."""
    groups = {
        g.name: placement_group(
            g.bundles, strategy=g.strategy, bundle_label_selector=[{NODE_ID_LABEL_KEY: node} for node in g.nodes]
        )
        for g in plan.groups
        if g.bundles
    }
    refs = {name: pg.ready() for name, pg in groups.items()}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    if len(ready) < len(refs):
        waiting = [name for name, ref in refs.items() if ref not in ready]
        for pg in groups.values():
            remove_placement_group(pg)
        raise PlacementError(
            f"Ray could not reserve the {', '.join(waiting)} placement group(s) within {timeout_s:.0f}s, though the "
            "nodes' declared resources fit the plan: other work probably holds them (`ray status` shows what is "
            "in use). Free them, or plan for less (`rlhf-dist plan` shows the plan)."
        )
    return groups


def _placed(
    plan: Plan, groups: dict[str, PlacementGroup], role: str, index: int, res: RoleResources, restarts: int = 0,
    name: str | None = None,
) -> dict:
    """The options that start actor ``role-index`` (or ``name``) in its planned bundle, with its planned threads."""
    threads = plan.threads_of(role, index)
    return _options(name or f"{role}-{index}", res, threads, restarts) | _slot(plan, groups, role, index)


def _slot(plan: Plan, groups: dict[str, PlacementGroup], role: str, index: int) -> dict:
    """The scheduling option that starts actor ``role-index`` in its planned bundle."""
    slot = plan.slot(role, index)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(groups[slot.group], slot.bundle)}


def start_world(
    actor_cls: Any, plan: Plan, groups: dict[str, PlacementGroup], res: RoleResources, name: str = "learner"
) -> tuple[list[Any], tuple[str, int]]:
    """Start the ranks of one DeepSpeed world, rank i in the plan's ``learner`` slot i with ``res``,
    and return them with rank 0's rendezvous address (MASTER_ADDR, MASTER_PORT) for their setup.
    ``actor_cls(rank)`` must have ``rendezvous_address()``; actors are named ``{name}-{rank}``.
    A rank is never restarted: a DeepSpeed world cannot take a new rank."""
    ranks = [
        actor_cls.options(**_placed(plan, groups, "learner", i, res, name=f"{name}-{i}")).remote(i)
        for i in range(len(plan.role_slots("learner")))
    ]
    return ranks, gather([ranks[0].rendezvous_address.remote()], name)[0]


def build_roles(cfg: RunConfig, model_path: str) -> tuple[Roles, tuple[str, int]]:
    """Plan placement on the live cluster (`PlacementError` before any actor starts when it cannot
    hold the run), reserve it, start every actor in its bundle and wait until all are up; returns
    the roles and the sync-group address."""
    plan = plan_placement(cfg, live_nodes())
    groups = reserve(plan)
    try:
        roles, sync_address = _start_actors(cfg, model_path, plan, groups)
    except BaseException:
        for pg in groups.values():  # removing a group also kills the actors in it
            remove_placement_group(pg)
        raise
    roles.placement_groups = list(groups.values())
    roles.plan = plan
    return roles, sync_address


def _start_actors(
    cfg: RunConfig, model_path: str, plan: Plan, groups: dict[str, PlacementGroup]
) -> tuple[Roles, tuple[str, int]]:
    place = cfg.placement
    seed = cfg.seed
    started = time.perf_counter()
    restarts = cfg.recovery.max_actor_restarts  # learners: 0, a DeepSpeed world cannot take a new rank
    multi_turn = None
    if cfg.rollout.multi_turn is not None:
        multi_turn = MultiTurnSpec.from_config(cfg)
    rollout = [
        RolloutWorker.options(**_placed(plan, groups, "rollout", i, place.rollout, restarts)).remote(
            EngineSpec.from_config(cfg, model_path, seed + i), multi_turn
        )
        for i in range(cfg.rollout.num_workers)
    ]
    reward = [
        RewardScorer.options(**_placed(plan, groups, "reward", i, place.reward, restarts)).remote(cfg.reward)
        for i in range(cfg.reward.num_workers)
    ]
    reference_spec = ReferenceSpec.from_config(cfg, model_path)
    in_learners = place.reference_in_learners
    reference = [] if in_learners else [
        ReferenceActor.options(**_placed(plan, groups, "reference", i, place.reference, restarts)).remote(
            reference_spec
        )
        for i in range(cfg.reference.num_workers)
    ]
    learners, (master_addr, master_port) = start_world(Learner, plan, groups, place.learner)
    critic_path = None
    if cfg.algorithm.name == "ppo" and cfg.learner.critic_init == "reward_model":
        critic_path = next(c.path for c in cfg.reward.components if c.type == "model")
    setups = [
        l.setup.remote(cfg, model_path, len(learners), master_addr, master_port, critic_path,
                       reference_spec if in_learners else None)
        for l in learners
    ]
    engine = "vLLM" if cfg.rollout.engine == "vllm" else "transformers"
    holding = ", each with the reference model" if in_learners else ""
    ready = [
        (f"learners ready: ZeRO-{cfg.learner.zero_stage}, {_count(len(learners), 'rank')}{holding}", "learner",
         setups, False),
        (f"{engine} engine {{k}}/{{n}} ready", "rollout", [a.ready.remote() for a in rollout], True),
        (f"reward ready: {_count(len(reward), 'scorer')}", "reward scorer", [a.ready.remote() for a in reward], False),
    ]
    if reference:
        ready.append((f"reference model ready: {_count(len(reference), 'actor')}", "reference",
                      [a.ready.remote() for a in reference], False))
    wait_ready(ready, started)
    sync_address = gather([learners[0].rendezvous_address.remote()], "learner")[0]
    return Roles(rollout, reward, reference, learners, reference_in_learners=in_learners), sync_address


def wait_ready(groups: list[tuple[str, str, list[Any], bool]], started: float) -> None:
    """Wait for the actors' start-up calls, printing a phase line (time since ``started``) as each
    group is ready, in the order they finish; a failed call raises at once, naming its role.

    Each group: ``(line, role, refs, each)``; with ``each`` a line per actor, ``{k}/{n}`` counting them.
    """
    pending = {ref: i for i, (_, _, refs, _) in enumerate(groups) for ref in refs}
    left = [len(refs) for _, _, refs, _ in groups]
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        line, role, refs, each = groups[i]
        gather(ready, role)
        left[i] -= 1
        if each or not left[i]:
            console.done(line.format(k=len(refs) - left[i], n=len(refs)), time.perf_counter() - started)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
