"""`rlhf-dist sft|rm|dpo`: the supervised stages."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from launch.cli.args import split_config_args
from launch.cli.help_text import STAGE_EXAMPLES
from launch.console import outputs_line
from rlhf_dist.config import load_config
from rlhf_dist.config.stages import StageConfig


def add_stage_parsers(commands: argparse._SubParsersAction) -> None:
    for kind, text in (
        ("sft", "supervised fine-tuning on prompt/response (or chat) rows"),
        ("rm", "train a Bradley-Terry reward model on preference pairs, with calibration"),
        ("dpo", "direct preference optimisation on preference pairs"),
    ):
        stage = commands.add_parser(
            kind, help=text, description=text[0].upper() + text[1:] + ", on DeepSpeed learner actors.",
            epilog=STAGE_EXAMPLES.format(kind=kind), formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        stage.add_argument(
            "items", nargs="*", metavar="[CONFIG] [key=value ...]",
            help="a YAML file of the stage's config, then dotted overrides, e.g. data.path=pairs.jsonl model.path=DIR",
        )
        stage.add_argument("--run-dir", default=None, help=f"output directory (default: runs/{kind}-<timestamp>)")
        stage.set_defaults(handler=_stage, kind=kind)


def _stage(args: argparse.Namespace) -> int:

    # imported here, not at the top: the stages load torch and transformers; `--help` must not wait for them
    from launch.stages import run_stage

    path, overrides = split_config_args(args.items)
    cfg = load_config(path, overrides, schema=StageConfig)
    name = cfg.name or args.kind
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_stage(args.kind, cfg, run_dir)
    print(f"{args.kind} model written to {result.model_dir}")
    print(outputs_line(run_dir, {"model/": "the trained model in Hugging Face format"}))
    return 0
