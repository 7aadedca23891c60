"""A run submitted to a real Ray head: `ray start --head`, `rlhf-dist submit`, status, logs, metrics."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rlhf_dist.weight_sync.group import free_port

BIN = Path(sys.executable).parent


def cli(*args, env, cwd=None):
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=cwd)


def test_submit_runs_the_users_project_to_success_with_logs_and_metrics(ray_head, tmp_path):
    """Submitted from the user's folder: its reward module and its relative data path reach the job
    (they exist nowhere else), with rlhf-dist's own code beside them."""
    address, env = ray_head["address"], ray_head["env"]
    (tmp_path / "proj_reward.py").write_text(
        "def share_of_a(completions, **kwargs):\n"
        "    return [sum(c == 'a' for c in t) / max(1, len(t.replace(' ', ''))) for t in completions]\n")
    (tmp_path / "prompts.jsonl").write_text("".join(f'{{"prompt": "write letters: cat {i}"}}\n' for i in range(32)))
    out = cli("submit", "train", "steps=3", "logging.samples_every=0", "data.prompts=prompts.jsonl",
              "reward.components=[{type: python, path: 'proj_reward:share_of_a'}]", "--address", address,
              env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    job_id = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("submitted job:"))
    assert f"{address}/#/jobs/{job_id}" in out.stdout

    deadline, state = time.time() + 600, ""
    while time.time() < deadline:
        status = cli("status", job_id, "--address", address, env=env)
        state = (status.stdout.splitlines() or [""])[0]
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    assert status.returncode == {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}.get(state, 0)
    logs = cli("logs", job_id, "--address", address, env=env).stdout
    assert state == "SUCCEEDED", logs[-3000:]
    # The user's reward, trained on and summarised; the toy's gold went with the toy's reward.
    assert "reward (reward/mean)" in logs and "share_of_a (reward/share_of_a)" in logs and "outputs:" in logs
    assert "gold reward" not in logs
    assert "step 3/3  reward" in logs, "the job's logs show one progress line per step"

    body = urllib.request.urlopen(f"http://127.0.0.1:{ray_head['metrics']}/metrics", timeout=10).read().decode()
    for name in ("rlhf_reward_mean", "rlhf_reward_share_of_a", "rlhf_kl_mean", "rlhf_rollout_logprob_abs_diff",
                 "rlhf_policy_version", "rlhf_timing_generate", "rlhf_throughput_tokens_per_s", "rlhf_sync_seconds"):
        assert f"ray_{name}{{" in body, f"{name} missing from the head's metrics endpoint"


def test_bad_config_and_unreachable_head_fail_before_submission(ray_head):
    out = cli("submit", "train", "learner.zero_stage=7", "--address", ray_head["address"], env=ray_head["env"])
    assert out.returncode == 2 and "learner.zero_stage: got 7" in out.stderr
    out = cli("submit", "train", "steps=1", "--address", f"http://127.0.0.1:{free_port()}", env=ray_head["env"])
    assert out.returncode == 2 and "cannot reach the Ray Jobs API" in out.stderr and "Traceback" not in out.stderr
    out = cli("status", "raysubmit_nope", "--address", ray_head["address"], env=ray_head["env"])
    assert out.returncode == 2 and "no job 'raysubmit_nope'" in out.stderr
    out = cli("status", "raysubmit_x", "--address", "127.0.0.1:8265", env=ray_head["env"])
    assert out.returncode == 2 and "must be the dashboard URL" in out.stderr


def test_plan_reads_the_heads_nodes(ray_head):
    out = cli("plan", "--address", ray_head["address"], env=ray_head["env"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"the cluster at {ray_head['address']}" in out.stdout and "learner-1" in out.stdout
    assert "/4  GPU 0/0" in out.stdout.split("nodes")[-1], "the head declares 4 CPUs and no GPU"
    out = cli("plan", "placement.learner.num_gpus=1", "--address", ray_head["address"], env=ray_head["env"])
    assert out.returncode == 2 and "placement impossible" in out.stderr and "0 GPU in total" in out.stderr
