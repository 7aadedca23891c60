"""The integration tier: a real local Ray, real DeepSpeed engines, real vLLM and transformers engines
(tests/README.md). Every test here is marked ``integration`` and ``slow``.

`ray_cluster` starts one local Ray per test module: ``RAY_CPUS`` CPUs (a module constant, default 4),
the module's name as its namespace. `simulated_cluster` joins several raylets on this machine
(``ray.cluster_utils.Cluster``), each with the resources it declares (GPUs included), for the modules
that need nodes.
"""

import contextlib
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.conftest import mark_tier


def pytest_collection_modifyitems(config, items):
    mark_tier(items, Path(__file__).parent, pytest.mark.integration, pytest.mark.slow)


@pytest.fixture(scope="module")
def ray_cluster(request):
    cpus = getattr(request.module, "RAY_CPUS", 4)
    namespace = "test-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace=namespace)
    yield
    ray.shutdown()


@contextlib.contextmanager
def simulated_cluster(head: dict, *nodes: dict, wait: bool = True, **init):
    """A head raylet with ``head`` (``num_cpus``, ``num_gpus``, ``resources``), one more raylet per entry
    of ``nodes``, and this process connected with ``ray.init(**init)``; yields (cluster, Ray context)."""
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for node in nodes:
        cluster.add_node(**node)
    if wait:
        cluster.wait_for_nodes()
    context = ray.init(address=cluster.address, **init)
    try:
        yield cluster, context
    finally:
        ray.shutdown()
        cluster.shutdown()
