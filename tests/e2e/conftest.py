"""The e2e tier: the `rlhf-dist` command as a user runs it, whole runs included (tests/README.md).
Every test here is marked ``e2e`` and ``slow``.

`ray_head` is one real `ray start --head --block` per test module (dashboard, Jobs API and a
metrics export port, 4 CPUs), for the tests that submit jobs; it is stopped through its own process
group, never with `ray stop --force` (which would stop every local Ray on the machine).

`local_ray` starts the local Ray that a module's in-process runs (`launch.run.train`) then share: a run
finds Ray up and joins it instead of starting and stopping its own, as the demo's stages do, so the
module pays Ray's start once.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray

from launch.roles import start_ray_cpus
from rlhf_dist.weight_sync.group import free_port
from tests.conftest import mark_tier

BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config, items):
    mark_tier(items, Path(__file__).parent, pytest.mark.e2e, pytest.mark.slow)


@pytest.fixture(scope="module")
def ray_head():
    """{"address": dashboard URL, "metrics": metrics export port, "env": the env a job's CLI runs with}."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")  # the job's `python` is ours
    env.pop("RAY_ADDRESS", None)
    # A temp dir of its own: heads started side by side in one /tmp/ray race for its `session_latest`
    # link, and a job's runtime env then points at the other head's packages (RuntimeEnvSetupError).
    temp = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    proc, address, metrics = start_head(env, f"--temp-dir={temp}")
    try:
        yield {"address": address, "metrics": metrics, "env": env}
    finally:
        stop_process_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def start_head(env: dict, *extra: str) -> tuple[subprocess.Popen, str, int]:
    """A `ray start --head --block` in its own process group (free ports, 4 CPUs, ``extra`` flags), once its
    dashboard answers: (process, dashboard URL, metrics export port). Stop it with `stop_process_group`,
    which touches no other Ray on the machine (tests may run side by side)."""
    dashboard, metrics = free_port(), free_port()
    # The ports a head takes by default at fixed numbers (the job agent's 52365, the client server's
    # 10001) are free ones instead: two heads of tests running side by side must not collide.
    ports = [f"--{name}={free_port()}" for name in ("port", "ray-client-server-port", "dashboard-agent-listen-port")]
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", *ports, "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}", "--num-cpus=4",
         "--disable-usage-stats", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"ray start --head stopped: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            break
        except urllib.error.HTTPError:  # it answers (401 where token auth is on): up
            break
        except OSError:
            if time.time() > deadline:
                stop_process_group(proc)
                raise AssertionError("the head's dashboard did not come up in 180 s")
            time.sleep(1)
    return proc, address, metrics


def stop_process_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop a `ray start --block` head and everything it started (its own process group): SIGTERM, then
    SIGKILL after ``grace_s``. Ray's graceful stop of an idle head takes ~30 s, and no test reads what
    it would write on the way out."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def local_ray():
    start_ray_cpus(2)  # as `train` starts it: every core, our namespace, the actors' environment
    yield
    ray.shutdown()
