"""Submitting runs to a Ray cluster through the Ray Jobs API, and following them.

`rlhf-dist submit train|sft|rm|dpo|demo` validates the config and what else it can here
(launch/preflight.py), before anything reaches the cluster, and ships the user's project (``--working-dir``,
default the current directory, less `EXCLUDES` and ``--exclude``, at most `MAX_PROJECT_BYTES`) as the
job's working_dir, rlhf-dist's own packages as py_modules (the code that checked the config runs it;
the cluster's Python provides the dependencies), and the resolved YAML in an environment variable.
The job runs `python -m launch KIND env:RLHF_DIST_CONFIG_YAML --run-dir RUN_DIR` (the demo takes no
config; ``train --resume RUN_DIR`` takes the run's own), which joins the cluster through RAY_ADDRESS.

Where the run writes: `--run-dir` (absolute), else `--storage ROOT`/NAME-TIME, else the cluster's
``$RLHF_DIST_STORAGE``/NAME-TIME (cluster.yaml sets it to its shared mount), else runs/NAME-TIME in
the job's working directory, which suits a one-node cluster only (a multi-node run refuses it,
launch/storage.py). The job prints the resolved run dir as its first log line; the job's metadata
keeps it (or the expression the cluster resolves) for `status` and `logs`.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from launch.preflight import preflight_submit
from launch.ray_auth import auth_headers
from launch.storage import STORAGE_ENV
from rlhf_dist.config import dump_config
from rlhf_dist.errors import UserError

OUR_PACKAGES = [Path(__file__).resolve().parent.parent / name for name in ("rlhf_dist", "actors", "launch")]
CONFIG_ENV = "RLHF_DIST_CONFIG_YAML"
EXCLUDES = [".git", ".venv", "venv", "runs", "wandb", "**/__pycache__", "*.egg-info", ".ipynb_checkpoints",
            "node_modules", ".mypy_cache", ".pytest_cache"]
MAX_PROJECT_BYTES = 100 * 2**20  # Ray's own limit is larger; past this, a stray model or dataset is the likely cause
AGENT_WAIT_S, AGENT_RETRY_S = 180.0, 2.0  # right after `ray start`, the head may have no job agent yet (minutes on a loaded machine)
KINDS = ("train", "sft", "rm", "dpo", "demo")
RUN_DIR_LINE = "rlhf-dist run dir: "  # the job's first log line; `status` reads the resolved dir from it
CLUSTER_DEFAULT = f"${{{STORAGE_ENV}:-$PWD/runs}}"  # resolved by the job's shell on the cluster


@dataclass(frozen=True)
class JobSpec:
    """What `submit` hands to the Jobs API for one run."""

    kind: str  # train | sft | rm | dpo | demo
    name: str  # the run's name: NAME-TIME is its directory, and the job's metadata keeps it
    run_dir: str  # absolute, or CLUSTER_DEFAULT/NAME-TIME for the cluster's shell to resolve
    entrypoint: str  # a POSIX shell line: set RUN_DIR, print it, exec the command
    env_vars: dict[str, str]  # the resolved config travels here (CONFIG_ENV); empty for the demo

    @property
    def metadata(self) -> dict[str, str]:
        return {"rlhf_dist_run": self.name, "rlhf_dist_kind": self.kind, "rlhf_dist_run_dir": self.run_dir}


def choose_run_dir(name: str, run_dir: str | None = None, storage: str | None = None) -> str:
    """The run dir of a submitted job (see the module docstring). Paths are the cluster's, so they are
    checked as POSIX paths, not against this machine's disks."""
    if run_dir and storage:
        raise UserError("give --run-dir (the run's own directory) or --storage (a root for NAME-TIME), not both")
    for flag, value in (("--run-dir", run_dir), ("--storage", storage)):
        if value is not None and not PurePosixPath(value).is_absolute():
            raise UserError(
                f"{flag} {value!r} is relative; a submitted job would resolve it inside its temporary copy of the "
                f"project on one node. Give an absolute path on the cluster's shared storage, e.g. "
                f"{flag} /mnt/shared/rlhf-dist{'/' + name if flag == '--run-dir' else ''}"
            )
    if run_dir:
        return run_dir
    leaf = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return f"{storage.rstrip('/') or '/'}/{leaf}" if storage else f"{CLUSTER_DEFAULT}/{leaf}"


def job_spec(kind: str, cfg=None, *, run_dir: str | None = None, storage: str | None = None, python: str = "python",
             recipe: str = "preference", small: bool = False, seed: int = 0, resume: str | None = None) -> JobSpec:
    """The job for ``rlhf-dist submit KIND``: ``cfg`` is a RunConfig (train) or StageConfig (sft, rm,
    dpo); the demo takes ``recipe``, ``small`` and ``seed`` instead; ``resume`` (train): the run dir,
    on the cluster, of a run to continue with its own config."""
    if kind not in KINDS:
        raise UserError(f"cannot submit {kind!r}; submit one of: {', '.join(KINDS)}")
    if resume is not None:
        if not PurePosixPath(resume).is_absolute():
            raise UserError(f"--resume {resume!r} must be the run's absolute directory on the cluster")
        name = PurePosixPath(resume).name or "resume"
        command = " ".join([shlex.quote(python), "-m", "launch", "train", '--resume "$RUN_DIR"', "--no-progress"])
        entrypoint = f'RUN_DIR={shlex.quote(resume)}; echo "{RUN_DIR_LINE}$RUN_DIR"; exec {command}'
        return JobSpec("train", name, resume, entrypoint, {})
    if kind == "demo":
        name, env_vars = f"demo-{recipe}", {}
        args = [recipe, *(["--small"] * small), *(["--seed", str(seed)] if seed else [])]
    else:
        name, env_vars = (cfg.name or kind), {CONFIG_ENV: dump_config(cfg)}
        args = [f"env:{CONFIG_ENV}", *(["--no-progress"] if kind == "train" else [])]
    where = choose_run_dir(name, run_dir, storage)
    # The run dir is quoted for the shell except the cluster's default root, which the shell must expand.
    value = (f'"{CLUSTER_DEFAULT}"/{shlex.quote(where[len(CLUSTER_DEFAULT) + 1:])}'
             if where.startswith(CLUSTER_DEFAULT) else shlex.quote(where))
    command = " ".join([shlex.quote(python), "-m", "launch", kind, *map(shlex.quote, args), '--run-dir "$RUN_DIR"'])
    entrypoint = f'RUN_DIR={value}; echo "{RUN_DIR_LINE}$RUN_DIR"; exec {command}'
    return JobSpec(kind, name, where, entrypoint, env_vars)


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


def submit(spec: JobSpec, cfg, address: str, token: str | None = None, working_dir: str | Path = ".",
           excludes: list[str] | None = None) -> str:
    """Check what can be checked here against the project ``working_dir``, then submit ``spec`` with
    it; returns the job id."""
    project = Path(working_dir).expanduser().resolve()
    if not project.is_dir():
        raise UserError(f"--working-dir {str(working_dir)!r} is not a directory; give your project's folder")
    skip = [*EXCLUDES, *(excludes or [])]
    if cfg is not None:  # before the cluster sees it
        preflight_submit(cfg, project, [e for e in skip if "*" not in e])
    project_size_check(project, skip)
    client = job_client(address, token)
    runtime_env = {"working_dir": str(project), "py_modules": [str(p) for p in OUR_PACKAGES], "excludes": skip,
                   "env_vars": spec.env_vars}
    deadline, said = time.monotonic() + AGENT_WAIT_S, False
    while True:
        try:
            return client.submit_job(entrypoint=spec.entrypoint, runtime_env=runtime_env, metadata=spec.metadata)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            if not said:
                print(f"the head at {address} has no job agent yet (it is starting); retrying for up to "
                      f"{AGENT_WAIT_S:.0f} s", file=sys.stderr)
                said = True
            time.sleep(AGENT_RETRY_S)


def project_size_check(project: Path, excludes: list[str]) -> int:
    """The bytes the job would upload from ``project``; refused past `MAX_PROJECT_BYTES`, naming the
    largest entries and how to leave them out."""
    sizes: dict[str, int] = {}
    for root, dirs, files in os.walk(project):
        rel_root = Path(root).relative_to(project)
        dirs[:] = [d for d in dirs if not _excluded(rel_root / d, excludes)]
        for name in files:
            rel = rel_root / name
            if _excluded(rel, excludes):
                continue
            try:
                size = (Path(root) / name).stat().st_size
            except OSError:
                continue
            sizes[rel.parts[0]] = sizes.get(rel.parts[0], 0) + size
    total = sum(sizes.values())
    if total > MAX_PROJECT_BYTES:
        biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        shown = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for name, size in biggest)
        raise UserError(
            f"the project {project} would upload {total / 2**20:.0f} MiB (limit {MAX_PROJECT_BYTES / 2**20:.0f} MiB); "
            f"largest: {shown}. Put models and data on the cluster's shared storage and leave them out with "
            f"--exclude NAME, or submit from a smaller --working-dir"
        )
    return total


def _excluded(rel: Path, patterns: list[str]) -> bool:
    text = rel.as_posix()
    return any(fnmatch.fnmatch(text, p) or fnmatch.fnmatch(rel.name, p.removeprefix("**/")) or text == p.strip("/")
               for p in patterns)


@dataclass(frozen=True)
class JobState:
    """A submitted job as `status` reports it."""

    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    run: str | None  # the run's name (None for a job not submitted by rlhf-dist)
    run_dir: str | None  # where it writes on the cluster, as resolved by the job once it started


def _ask(job_id: str, address: str, token: str | None, call: str):
    client = job_client(address, token)
    try:
        return getattr(client, call)(job_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc):
            raise UserError(f"no job {job_id!r} on {address}; `ray job list --address {address}` lists them") from None
        raise


def status(job_id: str, address: str, token: str | None = None) -> JobState:
    info = _ask(job_id, address, token, "get_job_info")
    meta = info.metadata or {}
    run_dir = meta.get("rlhf_dist_run_dir")
    if run_dir and not run_dir.startswith("/"):  # the cluster's default: the job printed what it became
        run_dir = run_dir_from_logs(_ask(job_id, address, token, "get_job_logs")) or describe_run_dir(run_dir)
    return JobState(str(info.status.value), meta.get("rlhf_dist_run"), run_dir)


def logs(job_id: str, address: str, token: str | None = None) -> tuple[str, str | None]:
    """The job's logs, and its run dir (from the logs, else the job's metadata)."""
    text = _ask(job_id, address, token, "get_job_logs")
    meta = _ask(job_id, address, token, "get_job_info").metadata or {}
    recorded = meta.get("rlhf_dist_run_dir")
    return text, run_dir_from_logs(text) or (recorded and describe_run_dir(recorded))


def run_dir_from_logs(text: str) -> str | None:
    for line in text.splitlines()[:20]:
        if line.startswith(RUN_DIR_LINE):
            return line[len(RUN_DIR_LINE):].strip()
    return None


def describe_run_dir(recorded: str) -> str:
    """A run dir recorded at submit time, in words where the cluster resolves it."""
    if not recorded.startswith(CLUSTER_DEFAULT):
        return recorded
    leaf = recorded[len(CLUSTER_DEFAULT) + 1:]
    return f"${STORAGE_ENV}/{leaf} on the cluster (runs/{leaf} in the job's working directory if it is not set)"


def stop(job_id: str, address: str, token: str | None = None) -> bool:
    return bool(_ask(job_id, address, token, "stop_job"))
