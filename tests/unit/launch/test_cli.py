"""The `rlhf-dist` command as a user meets it: exit codes, short errors, --debug tracebacks."""

import subprocess
import sys
from pathlib import Path

import yaml


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=60)


def test_config_show_prints_yaml_with_overrides():
    out = run_cli("config", "show", "steps=3", "learner.zero_stage=3")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["steps"] == 3 and shown["learner"]["zero_stage"] == 3


def test_bad_config_exits_2_without_traceback():
    out = run_cli("config", "show", "learner.zero_stage=9")
    assert out.returncode == 2
    assert "learner.zero_stage: got 9" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback():
    out = run_cli("config", "show", "learner.zero_stage=9", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_missing_file_and_two_files():
    out = run_cli("config", "show", "does-not-exist.yaml")
    assert out.returncode == 2 and "does-not-exist.yaml' does not exist" in out.stderr
    out = run_cli("config", "show", "a.yaml", "b.yaml")
    assert out.returncode == 2 and "at most one config file" in out.stderr


# `rlhf-dist submit KIND`: the job each kind builds, with a fake Jobs API client (no cluster).

import json  # noqa: E402
import os  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

import launch.jobs  # noqa: E402
from launch.cli.main import main  # noqa: E402

ARGV_PRINTER = "#!/bin/sh\nexec {python} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"


class FakeJobs:
    """Records `submit_job` and answers `get_job_info`/`get_job_logs` like the Jobs API."""

    def __init__(self):
        self.submitted, self.logs = [], ""

    def submit_job(self, **job):
        self.submitted.append(job)
        return "raysubmit_fake"

    def get_job_info(self, job_id):
        return SimpleNamespace(status=SimpleNamespace(value="RUNNING"), metadata=self.submitted[-1]["metadata"])

    def get_job_logs(self, job_id):
        return self.logs


@pytest.fixture
def jobs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the user's project: what `submit` ships
    fake = FakeJobs()
    monkeypatch.setattr(launch.jobs, "job_client", lambda address, token=None: fake)
    printer = tmp_path / "python"  # stands for the cluster's `python`: prints the argv it was given
    printer.write_text(ARGV_PRINTER.format(python=sys.executable))
    printer.chmod(0o755)
    fake.python = str(printer)
    return fake


def run_entrypoint(job, cwd, storage=None):
    """Run the job's entrypoint as the Jobs API does (`sh -c`, in the working dir, with its env vars):
    (the run dir line it prints first, the argv `python` got)."""
    env = {k: v for k, v in os.environ.items() if k != "RLHF_DIST_STORAGE"}
    env.update(job["runtime_env"]["env_vars"], **({"RLHF_DIST_STORAGE": storage} if storage else {}))
    out = subprocess.run(job["entrypoint"], shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    first, argv = out.stdout.splitlines()
    return first, json.loads(argv)


@pytest.mark.parametrize("kind", ["train", "sft", "rm", "dpo"])
def test_submit_builds_the_job_of_every_configured_kind(kind, jobs, tmp_path, capsys, monkeypatch):
    from rlhf_dist.config import load_config
    from rlhf_dist.config.stages import StageConfig

    data = [] if kind == "train" else [f"data.path={tmp_path / 'rows.jsonl'}"]
    rc = main(["submit", kind, "name=job1", "seed=3", *data, "--run-dir", "/shared/my runs/job1", "--python", jobs.python])
    assert rc == 0, capsys.readouterr().err
    job = jobs.submitted[-1]
    assert job["metadata"] == {"rlhf_dist_run": "job1", "rlhf_dist_kind": kind, "rlhf_dist_run_dir": "/shared/my runs/job1"}
    assert job["runtime_env"]["working_dir"] == str(tmp_path)  # the user's project, not rlhf-dist's tree
    assert [Path(p).name for p in job["runtime_env"]["py_modules"]] == ["rlhf_dist", "actors", "launch"]
    first, argv = run_entrypoint(job, tmp_path)
    assert first == "rlhf-dist run dir: /shared/my runs/job1"
    assert argv == ["-m", "launch", kind, "env:RLHF_DIST_CONFIG_YAML", *["--no-progress"] * (kind == "train"),
                    "--run-dir", "/shared/my runs/job1"]
    # The job reads back the very config checked here.
    monkeypatch.setenv("RLHF_DIST_CONFIG_YAML", job["runtime_env"]["env_vars"]["RLHF_DIST_CONFIG_YAML"])
    cfg = load_config("env:RLHF_DIST_CONFIG_YAML", **({} if kind == "train" else {"schema": StageConfig}))
    assert cfg.name == "job1" and cfg.seed == 3
    assert "run dir: /shared/my runs/job1" in capsys.readouterr().out


def test_submit_demo_takes_no_config(jobs, tmp_path):
    assert main(["submit", "demo", "arithmetic", "--small", "--seed", "2", "--storage", "/shared/rd", "--python", jobs.python]) == 0
    job = jobs.submitted[-1]
    assert job["runtime_env"]["env_vars"] == {} and job["metadata"]["rlhf_dist_run"] == "demo-arithmetic"
    first, argv = run_entrypoint(job, tmp_path)
    run_dir = first.removeprefix("rlhf-dist run dir: ")
    assert run_dir.startswith("/shared/rd/demo-arithmetic-") and run_dir == job["metadata"]["rlhf_dist_run_dir"]
    assert argv == ["-m", "launch", "demo", "arithmetic", "--small", "--seed", "2", "--run-dir", run_dir]


def test_default_run_dir_is_resolved_by_the_cluster(jobs, tmp_path, capsys):
    """No --run-dir or --storage: the cluster's $RLHF_DIST_STORAGE, else runs/ in the job's working dir."""
    assert main(["submit", "sft", "data.path=/data/d.jsonl", "name=my.run", "--python", jobs.python]) == 0
    job = jobs.submitted[-1]
    first, argv = run_entrypoint(job, tmp_path, storage="/mnt/shared/rlhf-dist")
    assert first.startswith("rlhf-dist run dir: /mnt/shared/rlhf-dist/my.run-") and argv[-1] == first[19:]
    first, argv = run_entrypoint(job, tmp_path)
    assert first.startswith(f"rlhf-dist run dir: {tmp_path}/runs/my.run-") and argv[-1] == first[19:]
    assert "$RLHF_DIST_STORAGE/my.run-" in capsys.readouterr().out
    # status and logs: the dir the job printed, once it has.
    capsys.readouterr()
    jobs.logs = f"{first}\nsft: 8 train / 2 held-out examples\n"
    assert main(["status", "raysubmit_fake"]) == 0
    assert capsys.readouterr().out == f"RUNNING\nrun my.run: run dir {first[19:]}\n"
    assert main(["logs", "raysubmit_fake"]) == 0
    assert capsys.readouterr().out == f"{jobs.logs}run dir: {first[19:]}\n"


@pytest.mark.parametrize("flags, message", [
    (["--run-dir", "runs/x"], "--run-dir 'runs/x' is relative"),
    (["--storage", "shared"], "--storage 'shared' is relative"),
    (["--run-dir", "/a", "--storage", "/b"], "not both"),
])
def test_submit_refuses_a_relative_or_doubled_run_dir(flags, message, jobs, capsys):
    assert main(["submit", "demo", *flags]) == 2
    assert message in capsys.readouterr().err and not jobs.submitted


def test_submit_without_a_kind_submits_train_and_stages_need_data(jobs, capsys):
    """`submit CONFIG k=v` (the form from before other kinds could be submitted) still submits `train`."""
    assert main(["submit", "steps=3", "--run-dir", "/r/a", "--python", jobs.python]) == 0
    assert jobs.submitted[-1]["metadata"]["rlhf_dist_kind"] == "train"
    assert main(["submit", "--address", "http://127.0.0.1:8265", "steps=2", "--run-dir", "/r/b",
                 "--python", jobs.python]) == 0
    assert jobs.submitted[-1]["metadata"]["rlhf_dist_kind"] == "train"
    assert main(["submit", "sft", "data.path=/d.jsonl", "--run-dir", "/r/c", "--python", jobs.python]) == 0
    assert jobs.submitted[-1]["metadata"]["rlhf_dist_kind"] == "sft"
    jobs.submitted.clear()
    assert main(["submit", "rm", "--run-dir", "/r"]) == 2
    assert "a submitted stage needs data.path" in capsys.readouterr().err and not jobs.submitted


@pytest.mark.parametrize("state, code", [("SUCCEEDED", 0), ("RUNNING", 0), ("PENDING", 0), ("FAILED", 1), ("STOPPED", 3)])
def test_status_exit_code_follows_the_job(state, code, jobs, monkeypatch, capsys):
    assert main(["submit", "train", "--run-dir", "/shared/r", "--python", jobs.python]) == 0
    monkeypatch.setattr(jobs, "get_job_info", lambda job_id: SimpleNamespace(
        status=SimpleNamespace(value=state), metadata=jobs.submitted[-1]["metadata"]))
    assert main(["status", "raysubmit_fake"]) == code
    assert capsys.readouterr().out.splitlines()[-2] == state


def test_a_head_without_a_job_agent_yet_is_retried_with_a_line(jobs, monkeypatch, capsys):
    answers = [RuntimeError("No available agent to submit job, please try again later.")] * 2
    real = jobs.submit_job

    def flaky(**job):
        if answers:
            raise answers.pop()
        return real(**job)

    monkeypatch.setattr(jobs, "submit_job", flaky)
    monkeypatch.setattr(launch.jobs, "AGENT_RETRY_S", 0.01)
    assert main(["submit", "train", "--run-dir", "/shared/r", "--python", jobs.python]) == 0
    err = capsys.readouterr().err
    assert err.count("has no job agent yet (it is starting); retrying for up to 180 s") == 1 and not answers


def test_the_users_project_travels_checked_and_within_its_size(jobs, tmp_path, capsys):
    (tmp_path / "my_reward.py").write_text("def score(prompts, responses):\n    return [0.0] * len(prompts)\n")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "say a"}\n' * 16)
    ok = ["submit", "train", "reward.components=[{type: python, path: 'my_reward:score'}]", "data.prompts=prompts.jsonl",
          "--run-dir", "/shared/r", "--python", jobs.python]
    assert main(ok) == 0, capsys.readouterr().err
    (tmp_path / "checkpoints").mkdir()
    with open(tmp_path / "checkpoints" / "model.bin", "wb") as f:
        f.truncate(150 * 2**20)  # sparse: 150 MiB that cost no disk
    assert main(ok) == 2
    err = capsys.readouterr().err
    assert "would upload 150 MiB (limit 100 MiB); largest: checkpoints (150 MiB)" in err and "--exclude NAME" in err
    assert main([*ok, "--exclude", "checkpoints"]) == 0
    assert "checkpoints" in jobs.submitted[-1]["runtime_env"]["excludes"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert main([*ok, "--working-dir", str(other)]) == 2  # the data is not in that project
    assert f"data.prompts='prompts.jsonl': a relative path is read from the job's copy of {other}" in capsys.readouterr().err


def test_submit_train_resume_continues_a_run_on_the_cluster(jobs, tmp_path, capsys):
    assert main(["submit", "train", "--resume", "/shared/runs/r1", "--python", jobs.python]) == 0
    job = jobs.submitted[-1]
    assert job["runtime_env"]["env_vars"] == {} and job["metadata"]["rlhf_dist_run_dir"] == "/shared/runs/r1"
    first, argv = run_entrypoint(job, tmp_path)
    assert first == "rlhf-dist run dir: /shared/runs/r1"
    assert argv == ["-m", "launch", "train", "--resume", "/shared/runs/r1", "--no-progress"]
    assert main(["submit", "train", "--resume", "/shared/runs/r1", "steps=3"]) == 2
    assert "continues with RUN_DIR/config.yaml" in capsys.readouterr().err
