"""Submitting runs to a Ray cluster through the Ray Jobs API, and following them.

`rlhf-dist submit` validates the config and what else it can here (launch/preflight.py), before
anything reaches the cluster, and ships the project directory as the job's working_dir with the
resolved YAML in an environment variable; the job runs `python -m launch train
env:RLHF_DIST_CONFIG_YAML`, which joins the cluster through RAY_ADDRESS.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from rlhf_dist.config import RunConfig, dump_config
from rlhf_dist.errors import UserError

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_ENV = "RLHF_DIST_CONFIG_YAML"
EXCLUDES = [".venv", ".git", "runs", "tests", "**/__pycache__", "*.egg-info"]


def job_client(address: str, token: str | None = None):
    """A JobSubmissionClient, or a clear error when the head cannot be reached."""
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address {address!r} must be the dashboard URL, e.g. http://127.0.0.1:8265")
    try:
        return JobSubmissionClient(address, headers=auth_headers(token))
    except Exception as exc:  # Ray raises ConnectionError or RuntimeError depending on the failure
        raise UserError(
            f"cannot reach the Ray Jobs API at {address}: {exc}. Is a head running there "
            "(`ray start --head --dashboard-host=127.0.0.1`), and is the port its dashboard port (8265)?"
        ) from None


def auth_headers(token: str | None = None) -> dict[str, str] | None:
    """The Bearer header for a head with token auth: --token, $RAY_AUTH_TOKEN or Ray's token file.
    (A head without auth ignores it.)"""
    token = token or os.environ.get("RAY_AUTH_TOKEN") or _token_file()
    return {"Authorization": f"Bearer {token}"} if token else None


def _token_file() -> str | None:
    """Ray's token file (RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), where a local head keeps its token."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip() if path.is_file() else None


def submit(cfg: RunConfig, address: str, token: str | None = None, python: str = "python") -> str:
    from launch.preflight import preflight_submit

    preflight_submit(cfg, PROJECT_DIR, [e for e in EXCLUDES if "*" not in e])  # before the cluster sees it
    client = job_client(address, token)
    # The resolved config travels as an environment variable of the job: `train env:VAR` reads it.
    run_dir = f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    entrypoint = f"{python} -m launch train env:{CONFIG_ENV} --run-dir {shlex.quote(run_dir)} --no-progress"
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={
            "working_dir": str(PROJECT_DIR),
            "excludes": EXCLUDES,
            "env_vars": {CONFIG_ENV: dump_config(cfg)},
        },
        metadata={"rlhf_dist_run": cfg.name},
    )
    return job_id


def _ask(job_id: str, address: str, token: str | None, call: str):
    client = job_client(address, token)
    try:
        return getattr(client, call)(job_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            raise UserError(f"no job {job_id!r} on {address}; `ray job list --address {address}` lists them") from None
        raise


def status(job_id: str, address: str, token: str | None = None) -> str:
    return str(_ask(job_id, address, token, "get_job_status").value)


def logs(job_id: str, address: str, token: str | None = None) -> str:
    return _ask(job_id, address, token, "get_job_logs")


def stop(job_id: str, address: str, token: str | None = None) -> bool:
    return bool(_ask(job_id, address, token, "stop_job"))
