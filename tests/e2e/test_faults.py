"""Faults, as they happen to a real run: the driver SIGKILLed, actor processes killed mid-step.

One uninterrupted run is the reference. The in-process runs share one local Ray (`local_ray`); the
runs killed with SIGKILL are CLI processes with their own. Sampling is seeded per request and every piece of state
is checkpointed, so on CPU a resumed run and a run that lost actors must log *exactly* the same
metrics as the reference, step for step (timings aside). Any lost or doubled experience, stale
weights in a restarted generator, or state missing from a checkpoint shows up as a difference.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from launch.run import train
from rlhf_dist.checkpoints.files import checkpoint_dirs
from rlhf_dist.config import load_config
from rlhf_dist.driver.remote_calls import RunFailed
from rlhf_dist.metrics.logger import read_metrics

STEPS = 6
# The transformers engine: these tests are about the driver's faults and checkpoints, which do not
# depend on the engine, and it is ready ~15 s sooner than vLLM on 2 cores (vLLM is in tests/e2e/test_train.py).
OVERRIDES = [f"steps={STEPS}", "checkpoint.every=2", "logging.tensorboard=false", "checkpoint.save_final=false",
             "rollout.engine=hf"]
# Wall-clock figures differ between any two runs; everything else must match exactly.
VOLATILE = ("timing/", "throughput/", "sync/seconds", "sync/mb_per_s", "faults/")


def _comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for(condition, timeout_s=600.0, what="condition"):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def _actor_processes(prefix: str) -> list[psutil.Process]:
    """This test process's actors (its local Ray's workers, never another run's) whose name starts with
    ``prefix``: Ray names an actor's process `ray::Class` (idle) or `ray::Class.method` (busy)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:  # gone meanwhile
            continue
        if cmd and cmd[0].startswith(prefix):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, local_ray):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(None, OVERRIDES), run_dir, progress=False)
    return read_metrics(run_dir / "metrics.jsonl")


def _kill_after_a_checkpoint_then_resume(run_dir: Path, overrides: list[str], tmp_path: Path) -> list[dict]:
    """Start the CLI, SIGKILL it (and its Ray) once step 3 is logged, resume; the resumed metrics."""
    cmd = [sys.executable, "-m", "launch", "train", *overrides, "--run-dir", str(run_dir), "--no-progress"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # Past the first checkpoint (after step index 1) and into the following steps.
            _wait_for(lambda: 3 in _logged_steps(run_dir) or proc.poll() is not None, what="step 3")
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            time.sleep(2)
            # What the dead driver's Ray left behind would only compete for the CPUs.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert len(_logged_steps(run_dir)) < STEPS
    assert checkpoint_dirs(run_dir), "no complete checkpoint before the kill"

    out = subprocess.run(
        [sys.executable, "-m", "launch", "train", "--resume", str(run_dir), "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout
    return read_metrics(run_dir / "metrics.jsonl")


def test_resume_after_sigkill_matches_the_uninterrupted_run(reference_run, tmp_path):
    resumed = _kill_after_a_checkpoint_then_resume(tmp_path / "run", OVERRIDES, tmp_path)
    assert [r["step"] for r in resumed] == list(range(STEPS))
    assert _comparable(resumed) == _comparable(reference_run)
    assert resumed[-1]["data/prompts_consumed"] == reference_run[-1]["data/prompts_consumed"]


def test_async_resume_after_sigkill_matches_the_uninterrupted_run(tmp_path, local_ray):
    """async_steps=1: the checkpoint holds the batch produced ahead (tokens, log-probs, versions,
    scores), so the resumed run trains on the very batch the killed one had made."""
    overrides = [*OVERRIDES, "rollout.async_steps=1"]
    reference = train(load_config(None, overrides), tmp_path / "reference", progress=False).records
    assert [r["rollout/staleness_max"] for r in reference] == [0.0] + [1.0] * (STEPS - 1)
    middle, last = checkpoint_dirs(tmp_path / "reference")[-2:]
    assert [p.name for p in middle.glob("pending/*")] == [f"step-{middle.name[5:].lstrip('0')}.safetensors"]
    assert not list(last.glob("pending/*")), "nothing is produced ahead of the last step"
    resumed = _kill_after_a_checkpoint_then_resume(tmp_path / "run", overrides, tmp_path)
    assert [r["step"] for r in resumed] == list(range(STEPS))
    assert _comparable(resumed) == _comparable(read_metrics(tmp_path / "reference" / "metrics.jsonl"))


def test_multi_turn_resume_after_sigkill_matches_the_uninterrupted_run(tmp_path, local_ray):
    """Multi-turn trajectories with an env that pays by what it said (examples/envs/word_echo.py):
    each env is seeded from (run seed, step, prompt, sample), so the resumed run replays the very
    conversations of the uninterrupted one, step for step."""
    overrides = [*OVERRIDES, "rollout.multi_turn.env=examples.envs.word_echo:WordEchoEnv",
                 "rollout.multi_turn.max_turns=2", "reward.components=[]", "reward.gold=null",
                 "rollout.sampling.max_new_tokens=8", "rollout.prompts_per_step=8"]
    reference = train(load_config(None, overrides), tmp_path / "reference", progress=False).records
    assert all(r["rollout/turns_mean"] > 1 for r in reference)  # the env answered: real conversations
    resumed = _kill_after_a_checkpoint_then_resume(tmp_path / "run", overrides, tmp_path)
    assert [r["step"] for r in resumed] == list(range(STEPS))
    assert _comparable(resumed) == _comparable(read_metrics(tmp_path / "reference" / "metrics.jsonl"))


def test_killed_rollout_and_reward_actors_are_restarted_and_nothing_is_lost(reference_run, tmp_path, local_ray):
    run_dir = tmp_path / "run"
    killed: list[str] = []

    def killer():
        # A generator killed while it generates (mid-step), then the reward scorer a step later.
        _wait_for(lambda: 1 in _logged_steps(run_dir), what="step 1")
        busy = []
        _wait_for(lambda: bool(busy.extend(_actor_processes("ray::RolloutWorker.generate")) or busy), what="generate")
        busy[0].send_signal(signal.SIGKILL)
        killed.append("rollout")
        _wait_for(lambda: 3 in _logged_steps(run_dir), what="step 3")
        scorers = []
        _wait_for(lambda: bool(scorers.extend(_actor_processes("ray::RewardScorer")) or scorers), what="scorer")
        scorers[0].send_signal(signal.SIGKILL)
        killed.append("reward")

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = train(load_config(None, OVERRIDES), run_dir, progress=False)
    thread.join(timeout=5)
    assert killed == ["rollout", "reward"]
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(STEPS)), "each step exactly once"
    # The generator died mid-call, so the driver saw it; the idle scorer may be back before its next call.
    assert result.records[-1]["faults/actor_restarts"] >= 1
    assert records[-1]["data/prompts_consumed"] == STEPS * load_config(None, OVERRIDES).rollout.prompts_per_step
    assert all(r["sync/verified"] == 1.0 for r in records)
    # The redone steps sampled with the re-synced weights: identical to the run without faults.
    assert _comparable(records) == _comparable(reference_run)


def test_a_dead_learner_stops_the_run_cleanly_with_a_resumable_checkpoint(tmp_path, local_ray):
    run_dir = tmp_path / "run"

    def killer():
        _wait_for(lambda: checkpoint_dirs(run_dir) and 2 in _logged_steps(run_dir), what="checkpoint")
        learners = []
        _wait_for(lambda: bool(learners.extend(_actor_processes("ray::Learner")) or learners), what="learner")
        learners[-1].send_signal(signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(RunFailed) as failure:
        train(load_config(None, OVERRIDES), run_dir, progress=False)
    thread.join(timeout=5)
    message = str(failure.value)
    assert "learner" in message and "died" in message
    assert f"rlhf-dist train --resume {run_dir}" in message
    latest = checkpoint_dirs(run_dir)[-1]
    assert str(latest) in message
    state = json.loads((latest / "driver_state.json").read_text())
    assert state["steps_done"] == int(latest.name[5:]) and state["policy_version"] == state["steps_done"]
    assert (latest / "policy" / "state" / "mp_rank_00_model_states.pt").exists()


def test_a_raising_reward_function_is_one_clear_line_not_a_worker_traceback(tmp_path):
    (tmp_path / "user_reward.py").write_text(
        "def picky(prompts, responses):\n"
        "    raise ValueError(f'cannot score {responses[0]!r}')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-m", "launch", "train", "steps=2", "rollout.engine=hf", "reward.components.0.type=python",
         "reward.components.0.path=user_reward:picky", "reward.components.0.name=picky",
         "--run-dir", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("rlhf-dist: run failed: reward scorer failed:")
    assert "'picky' (user_reward:picky)" in last and "ValueError: cannot score" in last
    assert "Traceback" not in out.stderr.split("rlhf-dist: run failed")[-1]


def test_a_local_ray_stopped_from_outside_is_named_as_such(tmp_path):
    """`ray stop` from another shell, imitated for this run's Ray only (its GCS and raylet, found
    among the run's own child processes, killed as `ray stop --force` would): the run says its Ray
    was stopped from outside, with the resume line, not Ray's logs."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch", "train", "steps=8", "checkpoint.every=1", "rollout.engine=hf",
           "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: 1 in _logged_steps(run_dir) or proc.poll() is not None, what="step 1")
        assert proc.poll() is None
        ray_core = [p for p in psutil.Process(proc.pid).children(recursive=True)
                    if any(name in " ".join(p.cmdline()) for name in ("gcs_server", "raylet"))]
        assert ray_core, "the run's own Ray processes"
        for p in ray_core:
            p.kill()
        out, err = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("rlhf-dist: run failed: the local Ray this run started was stopped from outside"), err[-3000:]
    assert f"continue with: rlhf-dist train --resume {run_dir}" in last
