"""cluster.yaml passes Ray's own cluster-launcher validation (no cloud credentials needed), and says
what a user needs: the image, the install step, shared storage on every node as the run-dir root."""

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[3] / "cluster.yaml"


def validate(config):
    """Ray's `ray up` checks: defaults filled in (prepare_config), then the JSON schema and the
    node-type rules (validate_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.fixture
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_a_valid_ray_cluster_config(config):
    validate(config)
    assert config["head_node_type"] in config["available_node_types"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_the_image_and_the_install_step_are_stated(config):
    import ray

    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-") and image.endswith("-gpu"), "the Ray we test with"
    assert any("pip install" in c and ".[gpu]" in c for c in config["setup_commands"])
    assert "~/rlhf-dist" in config["file_mounts"]


def test_shared_storage_is_mounted_on_every_node_and_is_the_run_dir_root(config):
    mount = next(c for c in config["initialization_commands"] if "mount -t nfs4" in c)
    assert mount.rstrip().endswith(" /mnt/shared"), "EFS at /mnt/shared on every host"
    options = config["docker"]["run_options"]
    assert "-v /mnt/shared:/mnt/shared" in options, "the same path inside the container"
    assert "-e RLHF_DIST_STORAGE=/mnt/shared/rlhf-dist" in options, "the default root of submitted run dirs"
    # initialization_commands run on every node, head and workers alike (no per-type override here).
    assert not any("initialization_commands" in t for t in config["available_node_types"].values())


@pytest.mark.parametrize("breakage", ["min_workers", "docker", "head_type"])
def test_validation_catches_a_broken_config(config, breakage):
    if breakage == "min_workers":
        config["available_node_types"]["gpu_worker"]["min_workers"] = "many"
    elif breakage == "docker":
        config["docker"]["run_option"] = config["docker"].pop("run_options")  # a misspelled key
    else:
        config["head_node_type"] = "gpu_head"
    with pytest.raises(Exception):
        validate(config)
