"""`rlhf-dist train`: a new run, or `--resume` of one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.cli.args import split_config_args
from launch.cli.help_text import TRAIN_EXAMPLES
from rlhf_dist.checkpoints.run_lock import refuse_if_in_use
from rlhf_dist.config import load_config, toy_settings_line
from rlhf_dist.errors import UserError


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="run RL training (no CONFIG: the embedded tiny CPU run)",
        description="Run RL training: rollouts on vLLM, rewards, a reference model and DeepSpeed learners on Ray. "
        "Library logs go to RUN_DIR/logs/; the terminal shows each startup phase, the steps and a summary.",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "items", nargs="*", metavar="[CONFIG] [key=value ...]",
        help="a YAML file (default: the embedded tiny run, examples/tiny.yaml), then dotted overrides of "
        "its keys (`rlhf-dist config show` lists them all)",
    )
    train.add_argument("--run-dir", default=None, help="output directory (default: runs/<name>-<timestamp>)")
    train.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    train.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
        help="continue RUN_DIR (or --run-dir) from its last complete checkpoint, with its saved config.yaml",
    )
    train.add_argument(
        "--from", dest="resume_from", default=None, metavar="step-N|CHECKPOINT_DIR",
        help="with --resume: continue from this checkpoint instead of the latest; the newer ones are moved "
        "to RUN_DIR/checkpoints/abandoned-<time>/ (not deleted)",
    )
    train.add_argument(
        "--verify", action="store_true",
        help="with --resume: check every checkpoint file's sha256 against its manifest, whatever the size "
        "(by default only checkpoints under 2 GB are hashed; larger ones get a size check)",
    )
    train.add_argument(
        "--force", action="store_true",
        help="start even when the memory plan says a GPU bundle cannot fit (`rlhf-dist plan` shows it)",
    )
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    # imported here, not at the top: torch, transformers and Ray load in seconds, and `--help` must not wait for them
    from launch.run import load_resume_config, train
    from rlhf_dist.driver.remote_calls import ActorFailed, RunFailed

    progress = False if args.no_progress else None
    try:
        if args.resume is not None:
            run_dir = args.resume or args.run_dir
            if not run_dir:
                raise UserError("--resume needs the run directory: --resume RUN_DIR")
            refuse_if_in_use(Path(run_dir), "--resume")  # before reading it: the run there may be starting
            if args.items:
                raise UserError(
                    f"--resume continues with RUN_DIR/config.yaml; drop {' '.join(args.items)!r} "
                    "(to change the config, start a new run)"
                )
            train(load_resume_config(Path(run_dir)), Path(run_dir), progress=progress, resume=True,
                  resume_from=args.resume_from, verify=args.verify, force=args.force)
            return 0
        if args.resume_from is not None or args.verify:
            raise UserError("--from and --verify choose and check the checkpoint to continue from; add --resume RUN_DIR")
        path, overrides = split_config_args(args.items)
        cfg = load_config(path, overrides)
        if path is None and (line := toy_settings_line(overrides)):
            print(line)
        train(cfg, Path(args.run_dir) if args.run_dir else None, progress=progress, force=args.force)
    except (RunFailed, ActorFailed) as exc:
        if args.debug:
            raise
        print(f"rlhf-dist: run failed: {exc}", file=sys.stderr)
        return 1
    return 0
