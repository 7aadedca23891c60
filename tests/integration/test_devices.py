"""Explicit devices under Ray: on a node that declares GPUs, an actor with num_gpus=0 sees none
(CUDA_VISIBLE_DEVICES="") and an actor with GPUs sees exactly the ones Ray assigned it. The GPUs are
declared, not real: what is checked is the environment Ray gives each actor with `actor_env()`.
"""

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.shell import ComputeClock, actor_env
from tests.integration.conftest import simulated_cluster


@ray.remote
class Probe(ComputeClock):
    pass


@pytest.fixture(scope="module")
def gpu_node():
    with simulated_cluster({"num_cpus": 2, "num_gpus": 2}, wait=False, runtime_env={"env_vars": actor_env()}) as (c, _):
        yield c


def test_actors_see_only_the_gpus_they_were_assigned(gpu_node):
    cpu_only = Probe.options(num_cpus=0.1, num_gpus=0).remote()
    one_gpu = Probe.options(num_cpus=0.1, num_gpus=1).remote()
    cpu_env, cpu_ids = ray.get(cpu_only.visible_devices.remote())
    gpu_env, gpu_ids = ray.get(one_gpu.visible_devices.remote())
    assert (cpu_env, cpu_ids) == ("", [])  # not every GPU of the node
    assert len(gpu_ids) == 1 and gpu_env == str(gpu_ids[0])


def test_roles_sharing_a_bundle_see_its_one_gpu(gpu_node):
    """Learner rank, engine and a colocated reference worker in one bundle of one GPU (fractions)."""
    pg = placement_group([{"CPU": 0.3, "GPU": 1.0}])
    ray.get(pg.ready())
    try:
        in_bundle = PlacementGroupSchedulingStrategy(pg, 0)
        actors = [Probe.options(num_cpus=0.1, num_gpus=share, scheduling_strategy=in_bundle).remote()
                  for share in (0.4, 0.4, 0.2)]
        seen = ray.get([a.visible_devices.remote() for a in actors])
        assert len({env for env, _ in seen}) == 1 and seen[0][0] not in ("", None) and "," not in seen[0][0]
    finally:
        remove_placement_group(pg)
