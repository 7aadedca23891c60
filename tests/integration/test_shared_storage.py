"""The shared run-dir check on a real multi-node Ray cluster whose nodes see different directories.

A `ray.cluster_utils.Cluster` gives a head and a second node on this machine's disk. A third node
joins with `ray start` inside its own mount namespace (`unshare -m`), where a fresh tmpfs hides
``node-local/``: a path there names a different, empty directory on that node, as a disk that is
not shared would. Nothing about the check is simulated: the probe file, the tasks pinned to each
node and what each sees are real. Skipped where mount namespaces are not allowed (not root, or a
container without CAP_SYS_ADMIN).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from launch.storage import PROBE_PREFIX, check_shared_run_dir
from rlhf_dist.errors import UserError

BIN = Path(sys.executable).parent


def mount_namespaces_work(tmp: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(tmp)],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    hidden = root / "node-local"  # what the third node sees here is its own tmpfs
    hidden.mkdir()
    if not mount_namespaces_work(hidden):
        pytest.skip("mount namespaces (unshare -m, mount -t tmpfs) are not allowed here")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address)
    joined = None
    try:
        joined = _join_own_disk_node(c.address, hidden)
        yield root
    finally:
        ray.shutdown()
        if joined is not None:
            os.killpg(joined.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes
            joined.wait(timeout=60)
        c.shutdown()


def _start_own_disk_node(address: str, hidden: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs '{hidden}' && exec '{BIN / 'ray'}' start --address={address} --num-cpus=1 "
         "--resources='{\"own_disk\": 1}' --disable-usage-stats --block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )


def _join_own_disk_node(address: str, hidden: Path, attempts: int = 3) -> subprocess.Popen:
    """Start the third node and wait until it is alive. On a loaded machine its raylet can time out
    registering with the GCS (``ray start`` exits: "Deadline Exceeded"); then it is started again."""
    for attempt in range(1, attempts + 1):
        joined = _start_own_disk_node(address, hidden)
        deadline = time.time() + 120
        while sum(n["Alive"] for n in ray.nodes()) < 3 and joined.poll() is None and time.time() < deadline:
            time.sleep(1)
        if sum(n["Alive"] for n in ray.nodes()) >= 3:
            return joined
        error = joined.stderr.read()[-2000:] if joined.poll() is not None else b"no node within 120 s"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(joined.pid, signal.SIGTERM)
        joined.wait(timeout=60)
        if attempt == attempts:
            raise AssertionError(f"the own-disk node did not join in {attempts} tries: {error!r}")
    raise AssertionError("unreachable")


def own_disk_node_name():
    node = next(n for n in ray.nodes() if n["Alive"] and "own_disk" in n["Resources"])
    return f"{node['NodeManagerAddress']}/{node['NodeID'][:6]}"


def test_a_dir_every_node_sees_passes(cluster):
    run_dir = cluster / "shared" / "run1"
    check_shared_run_dir(run_dir)
    assert run_dir.is_dir() and not any(p.name.startswith(PROBE_PREFIX) for p in run_dir.iterdir())


def test_a_dir_one_node_does_not_see_is_refused_naming_it(cluster):
    run_dir = cluster / "node-local" / "run2"
    with pytest.raises(UserError) as info:
        check_shared_run_dir(run_dir)
    message = str(info.value)
    assert f"run dir {run_dir} is not shared by all 3 nodes" in message
    assert f"not seen by {own_disk_node_name()} (no directory {run_dir})" in message, message
    assert message.count("(no directory") == 1, "the head and the second node see it"
    assert not run_dir.exists(), "the check removes the directory it made"


def test_a_relative_dir_is_refused_on_several_nodes(cluster):
    with pytest.raises(UserError, match="'runs/x' is relative, and this Ray cluster has 3 nodes"):
        check_shared_run_dir(Path("runs/x"))


def test_a_stage_on_an_unshared_dir_stops_before_any_rank_starts(cluster, monkeypatch):
    """The launcher runs the check after joining the cluster and before it starts any actor."""
    from launch.stages import run_stage
    from rlhf_dist.config.stages import StageConfig
    from rlhf_dist.data.synthetic import demonstrations

    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    run_dir = cluster / "node-local" / "sft"
    cfg = StageConfig(logging={"tensorboard": False}, epochs=1, learner={"num_workers": 1})
    with pytest.raises(UserError, match=f"run dir {run_dir} is not shared by all 3 nodes"):
        run_stage("sft", cfg, run_dir, rows=demonstrations(32, seed=0))
    assert ray.is_initialized(), "joined, not started: the cluster lives on"
    # From the GCS (the state API would wait on the dashboard, which a loaded machine starts late).
    named = ray.util.list_named_actors(all_namespaces=True)
    assert not [a for a in named if a["name"].startswith("sft-")], named
