"""One run per run dir: an flock that a second process cannot take, that names its holder, and that
dies with its holder (SIGKILL included), so no stale lock outlives a run."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhf_dist.checkpoints.run_dir import claim_run_dir
from rlhf_dist.checkpoints.run_lock import LOCK_FILE, RunDirInUse, holder_of, release_run_dir, releasing_run_dirs

REPO = Path(__file__).resolve().parents[3]


def hold(run_dir: Path) -> subprocess.Popen:
    """Another process that claims ``run_dir`` (as a run does) and keeps it until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from rlhf_dist.checkpoints.run_dir import claim_run_dir
        claim_run_dir({str(run_dir)!r})
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def checksums(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in root.rglob("*") if f.is_file()}


def test_a_held_run_dir_is_refused_naming_the_pid_and_host_and_nothing_is_written(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold(run_dir)
    try:
        (run_dir / "tiny-model").mkdir()  # the first run's work so far
        (run_dir / "tiny-model" / "config.json").write_text("{}")
        before = checksums(run_dir)
        with pytest.raises(RunDirInUse) as info:
            claim_run_dir(run_dir)
        message = str(info.value)
        assert f"PID {holder.pid} on host {os.uname().nodename}" in message and "claim_run_dir" not in message
        assert "is in use by another rlhf-dist run" in message and "pick another run directory" in message
        assert checksums(run_dir) == before
        assert holder_of(run_dir)["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert holder_of(run_dir) is None  # the kernel dropped the lock with its holder: nothing stale
    with releasing_run_dirs():
        assert claim_run_dir(run_dir) == run_dir  # no steps yet: the dir is taken over
        assert holder_of(run_dir) is None  # this process holds it: not "another run"
        assert (run_dir / LOCK_FILE).read_text().count(str(os.getpid())) == 1
    other = hold(run_dir)  # released on leaving the block: another process may take it
    other.kill()
    other.wait()


def test_a_process_takes_its_own_run_dir_again_and_release_hands_it_on(tmp_path):
    run_dir = claim_run_dir(tmp_path / "run")
    assert claim_run_dir(run_dir) == run_dir  # the demo's stages, a resume in the same process
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", f"from rlhf_dist.checkpoints.run_dir import claim_run_dir; claim_run_dir({str(run_dir)!r})"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "RunDirInUse" in proc.stderr and f"PID {os.getpid()}" in proc.stderr
    assert time.monotonic() - start < 60
    release_run_dir(run_dir)
    other = hold(run_dir)
    other.kill()
    other.wait()
