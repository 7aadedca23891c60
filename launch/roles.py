"""Starting Ray and building the actor groups of a run from its config."""

from __future__ import annotations

import os

import ray

from actors.common import actor_env
from actors.learner import Learner
from actors.reference import ReferenceActor
from actors.reward import RewardScorer
from actors.rollout import RolloutWorker
from rlhf_dist.config import RunConfig
from rlhf_dist.config.schema import RoleResources
from rlhf_dist.driver import Roles, gather

NAMESPACE = "rlhf-dist"


def start_ray(cfg: RunConfig) -> bool:
    """Join the cluster named by RAY_ADDRESS (a submitted job), else start a fresh local one.

    Returns True when this call started Ray (so the caller shuts it down).
    """
    from launch.run import required_cpus

    return start_ray_cpus(required_cpus(cfg))


def start_ray_cpus(needed_cpus: float) -> bool:
    """`start_ray` for a known CPU need; a local cluster gets at least all cores."""
    import math

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": actor_env()}
    if address:
        ray.init(address=address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=True)
    else:
        ray.init(
            address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(needed_cpus)), include_dashboard=False,
            namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=True,
        )
    return True


def stop_roles(roles: Roles | None, shutdown: bool) -> None:
    """Kill the run's actors (their names free up for the next run) and Ray if we started it."""
    if roles is not None:
        for actor in roles.all():
            ray.kill(actor)
    if shutdown:
        ray.shutdown()


def _options(name: str, res: RoleResources, restarts: int = 0) -> dict:
    """Actor options. ``restarts``: how often Ray restarts a dead actor. Its failed calls are not
    retried by Ray (``max_task_retries=0``): the driver re-syncs weights first, then redoes them."""
    return {
        "name": name, "num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_concurrency": 1,
        "max_restarts": restarts, "max_task_retries": 0,
    }


def build_roles(cfg: RunConfig, model_path: str) -> tuple[Roles, tuple[str, int]]:
    """Start every actor, wait until all are up; returns the roles and the sync-group address."""
    place = cfg.placement
    seed = cfg.seed
    restarts = cfg.recovery.max_actor_restarts  # learners: 0, a DeepSpeed world cannot take a new rank
    rollout = [
        RolloutWorker.options(**_options(f"rollout-{i}", place.rollout, restarts)).remote(model_path, cfg, seed + i)
        for i in range(cfg.rollout.num_workers)
    ]
    reward = [
        RewardScorer.options(**_options(f"reward-{i}", place.reward, restarts)).remote(cfg.reward)
        for i in range(cfg.reward.num_workers)
    ]
    reference_path = cfg.reference.path or model_path
    reference = [
        ReferenceActor.options(**_options(f"reference-{i}", place.reference, restarts)).remote(reference_path, cfg)
        for i in range(cfg.reference.num_workers)
    ]
    learners = [
        Learner.options(**_options(f"learner-{i}", place.learner)).remote(i)
        for i in range(cfg.learner.num_workers)
    ]
    master_addr, master_port = gather([learners[0].rendezvous_address.remote()], "learner")[0]
    critic_path = None
    if cfg.algorithm.name == "ppo" and cfg.learner.critic_init == "reward_model":
        critic_path = next(c.path for c in cfg.reward.components if c.type == "model")
    setups = [
        l.setup.remote(cfg, model_path, len(learners), master_addr, master_port, critic_path) for l in learners
    ]
    gather(setups, "learner")
    gather([a.ready.remote() for a in rollout], "rollout")
    gather([a.ready.remote() for a in reward], "reward scorer")
    gather([a.ready.remote() for a in reference], "reference")
    sync_address = gather([learners[0].rendezvous_address.remote()], "learner")[0]
    return Roles(rollout, reward, reference, learners), sync_address
