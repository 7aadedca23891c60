"""`rlhf-dist submit KIND ...` and the commands that follow a submitted job (`status`, `logs`, `stop`).

Every command that trains can be submitted: `train`, `sft`, `rm` and `dpo` take a config and
overrides as they do locally; `demo` takes its recipe. The job itself is built in launch/jobs.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from launch import jobs
from launch.cli.args import split_config_args
from launch.jobs import KINDS, describe_run_dir, job_spec, submit
from rlhf_dist.config import load_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.errors import UserError

SUBMIT_EXAMPLES = """examples:
  rlhf-dist submit train examples/tiny.yaml steps=50 --address http://127.0.0.1:8265
  rlhf-dist submit examples/tiny.yaml steps=50 --address ...     (no KIND: train)
  rlhf-dist submit sft sft.yaml data.path=/mnt/shared/data/demos.jsonl --run-dir /mnt/shared/rlhf-dist/sft-1
  rlhf-dist submit demo arithmetic --small
  rlhf-dist submit train --resume /mnt/shared/rlhf-dist/run-20261207-101500   (continue a run there)
what travels: the current directory (--working-dir), your reward modules and relative data paths
included, less .git, .venv, runs/, caches and --exclude patterns (at most 100 MiB); rlhf-dist's own
code travels with it, and the cluster's Python provides the dependencies (cluster.yaml installs them).
where the run writes (on the cluster): --run-dir DIR, else --storage ROOT/NAME-TIME, else the cluster's
$RLHF_DIST_STORAGE/NAME-TIME (cluster.yaml: /mnt/shared/rlhf-dist), else runs/NAME-TIME in the job's
working directory (one-node clusters only). `rlhf-dist status JOB_ID` prints it.
"""


_VALUED = ("--address", "--token", "--run-dir", "--storage", "--python", "--seed", "--working-dir", "--exclude")
STATUS_EXIT = {"FAILED": 1, "STOPPED": 3}  # `status`: SUCCEEDED, RUNNING and PENDING exit 0


def with_default_kind(argv: list[str]) -> list[str]:
    """`submit CONFIG k=v ...`, the form without a kind, submits `train` (as it did before the
    other kinds could be submitted)."""
    if argv[:1] != ["submit"]:
        return argv
    rest, i = argv[1:], 0
    while i < len(rest) and rest[i].startswith("-"):
        if rest[i] in ("-h", "--help"):
            return argv
        i += 2 if rest[i] in _VALUED else 1
    if i < len(rest) and rest[i] in KINDS:
        return argv
    return ["submit", "train", *rest]


def add_job_parsers(commands, address_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """`submit KIND` for every kind, then `status`, `logs` and `stop`."""
    submit = commands.add_parser(
        "submit", help="submit a run (train, sft, rm, dpo or demo) to a Ray cluster as a Ray job",
        description="Submit a run to a Ray cluster as a Ray job; the config is checked here first.",
        epilog=SUBMIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND", help=" | ".join(KINDS))
    for kind in KINDS:
        what = "the end-to-end demo (no config)" if kind == "demo" else f"`rlhf-dist {kind}` with its config"
        job = kinds.add_parser(kind, help=f"submit {what}", epilog=SUBMIT_EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if kind == "demo":
            job.add_argument("recipe", nargs="?", default="preference", choices=("preference", "arithmetic", "tools"),
                             help="as for `rlhf-dist demo` (default: preference)")
            job.add_argument("--small", action="store_true", help="the smaller, faster version")
            job.add_argument("--seed", type=int, default=0, help="arithmetic, tools: seed of the data split, model and run")
        else:
            job.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                             help=f"the {kind} config, as for `rlhf-dist {kind}` (checked here first), then dotted overrides")
        if kind == "train":
            job.add_argument("--resume", default=None, metavar="RUN_DIR",
                             help="continue the run in RUN_DIR (absolute, on the cluster) with its own config")
        job.add_argument("--working-dir", default=".", metavar="DIR",
                         help="your project, uploaded as the job's working directory (default: the current one)")
        job.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                         help="leave files or folders matching PATTERN out of the upload (repeatable)")
        job.add_argument("--run-dir", default=None, metavar="DIR",
                         help="the run's directory on the cluster: an absolute path, on shared storage for several nodes")
        job.add_argument("--storage", default=None, metavar="ROOT",
                         help="write to ROOT/NAME-TIME on the cluster (default: the cluster's $RLHF_DIST_STORAGE)")
        address_args(job)
        job.add_argument("--python", default="python", help="interpreter on the cluster (default: python)")
        job.set_defaults(handler=run_submit)
    for name, text in (("status", "a submitted job's status and run dir"), ("logs", "a submitted job's logs and run dir"),
                       ("stop", "stop a submitted job")):
        job = commands.add_parser(name, help=text)
        job.add_argument("job_id", help="the id `rlhf-dist submit` printed (raysubmit_...)")
        address_args(job)
        job.set_defaults(handler=run_job, action=name)


def run_submit(args: argparse.Namespace) -> int:
    cfg, resume = None, getattr(args, "resume", None)
    if resume is not None and (args.items or args.run_dir or args.storage):
        raise UserError("submit train --resume RUN_DIR continues with RUN_DIR/config.yaml; drop the config, "
                        "overrides, --run-dir and --storage")
    if args.kind != "demo" and resume is None:  # bad input fails here, before the cluster sees it
        path, overrides = split_config_args(args.items)
        cfg = load_config(path, overrides, **({} if args.kind == "train" else {"schema": StageConfig}))
    extra = {"recipe": args.recipe, "small": args.small, "seed": args.seed} if args.kind == "demo" else {}
    spec = job_spec(args.kind, cfg, run_dir=args.run_dir, storage=args.storage, python=args.python, resume=resume,
                    **extra)
    job_id = submit(spec, cfg, args.address, args.token, args.working_dir, args.exclude)
    print(f"submitted job: {job_id}")
    print(f"run dir: {spec.run_dir if spec.run_dir.startswith('/') else describe_run_dir(spec.run_dir)}")
    print(f"dashboard: {args.address.rstrip('/')}/#/jobs/{job_id}")
    print(f"follow it: rlhf-dist logs {job_id} --address {args.address}")
    return 0


def run_job(args: argparse.Namespace) -> int:
    if args.action == "status":
        state = jobs.status(args.job_id, args.address, args.token)
        print(state.status)  # alone on the first line, for scripts
        if state.run_dir:
            print(f"run {state.run}: run dir {state.run_dir}")
        return STATUS_EXIT.get(state.status, 0)
    elif args.action == "logs":
        text, run_dir = jobs.logs(args.job_id, args.address, args.token)
        print(text, end="" if text.endswith("\n") or not text else "\n")
        if run_dir:
            print(f"run dir: {run_dir}")
    else:
        print("stopped" if jobs.stop(args.job_id, args.address, args.token) else "not running")
    return 0
