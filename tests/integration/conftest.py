"""The integration tier: a real local Ray, real DeepSpeed engines, real vLLM and transformers engines
(tests/README.md). Every test here is marked ``integration`` and ``slow``.

`ray_cluster` starts one local Ray per test module: ``RAY_CPUS`` CPUs (a module constant, default 4),
the module's name as its namespace. Modules that need several nodes build their own with
``ray.cluster_utils.Cluster``.
"""

from pathlib import Path

import pytest
import ray

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
