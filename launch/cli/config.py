"""`rlhf-dist config show`: the resolved config, or every field at its default."""

from __future__ import annotations

import argparse

from launch.cli.args import split_config_args
from rlhf_dist.config import dump_config, dump_defaults, load_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.errors import UserError


def add_config_parser(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="inspect run configs", description="Inspect run configs.")
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="ACTION", help="what to do with a config"
    )
    show = config_commands.add_parser(
        "show", help="print the resolved config (YAML that every command accepts back)"
    )
    show.add_argument(
        "items", nargs="*", metavar="[FILE] [key=value ...]",
        help="a YAML file (default: the embedded tiny run), then dotted overrides",
    )
    show.add_argument(
        "--defaults", action="store_true",
        help="print every field at its schema default, under its description (no FILE or overrides)",
    )
    show.add_argument(
        "--for", dest="command", default="train", choices=("train", "sft", "rm", "dpo"),
        help="the command whose config to show (default: train; the stages share one schema)",
    )
    show.set_defaults(handler=_config_show)


def _config_show(args: argparse.Namespace) -> int:
    if args.defaults:
        if args.items:
            raise UserError(
                f"--defaults prints the schema's defaults alone; drop {' '.join(args.items)!r} "
                "(or drop --defaults to see a resolved config)"
            )
        if args.command == "train":
            print(dump_defaults(), end="")
        else:
            print(dump_defaults(StageConfig, f"rlhf-dist {args.command}"), end="")
        return 0
    path, overrides = split_config_args(args.items)
    schema = {} if args.command == "train" else {"schema": StageConfig}
    print(dump_config(load_config(path, overrides, **schema)), end="")
    return 0
