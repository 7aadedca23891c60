"""`rlhf-dist submit sft` to a real Ray head (`ray start --head`): the job runs to SUCCEEDED and writes
everything (the tiny model it built, the metrics, the trained model) to the --run-dir given;
`status` and `logs` report that dir.

The head runs in its own process group (`ray start --block`) and is stopped through it, so that
other Ray clusters on this machine are left alone.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from rlhf_dist.data.synthetic import demonstrations

BIN = Path(sys.executable).parent


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, env=env, timeout=300)


def test_submitted_sft_runs_to_success_in_the_given_run_dir(ray_head, tmp_path):
    address, env = ray_head["address"], ray_head["env"]
    rows = tmp_path / "demos.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in demonstrations(48, seed=0)))
    run_dir = tmp_path / "shared" / "sft-run"
    out = cli("submit", "sft", f"data.path={rows}", "epochs=1", "logging.tensorboard=false",
              "--run-dir", str(run_dir), "--address", address, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    job_id = next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("submitted job:"))
    assert f"run dir: {run_dir}" in out.stdout

    deadline, lines = time.time() + 480, [""]
    while time.time() < deadline:
        lines = cli("status", job_id, "--address", address, env=env).stdout.splitlines()
        if lines and lines[0] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = cli("logs", job_id, "--address", address, env=env).stdout
    assert lines[0] == "SUCCEEDED", logs[-3000:]
    assert lines[1] == f"run sft: run dir {run_dir}"
    assert f"\nrlhf-dist run dir: {run_dir}\n" in logs, "the job's first own line"
    assert logs.rstrip().endswith(f"\nrun dir: {run_dir}"), "`logs` ends with the run dir"
    assert f"sft model written to {run_dir / 'model'}" in logs

    assert (run_dir / "tiny-model" / "policy" / "config.json").is_file(), "the tiny model is built into the run dir"
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "config.yaml").is_file()
    assert any("sft/eval_loss" in json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
