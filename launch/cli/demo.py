"""`rlhf-dist demo [preference|arithmetic|tools]`: the end-to-end recipes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="end-to-end recipes on the tiny model: preference (SFT -> RM -> PPO), arithmetic (SFT -> GRPO) "
        "or tools (SFT on tool calls -> multi-turn GRPO)"
    )
    demo.add_argument(
        "recipe", nargs="?", default="preference", choices=("preference", "arithmetic", "tools"),
        help="preference (default): SFT, a reward model and PPO against a gold preference rule; "
        "arithmetic: SFT then GRPO with the verifiable math rule, test accuracy before and after; "
        "tools: two-digit products with a multiply tool, SFT on tool calls then multi-turn GRPO",
    )
    demo.add_argument("--run-dir", default=None, help="output directory (default: runs/demo-<recipe>-<timestamp>)")
    demo.add_argument("--seed", type=int, default=0, help="arithmetic, tools: seed of the data split, the model and the run")
    demo.add_argument("--small", action="store_true", help="a smaller, faster version (used by the tests)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:

    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"demo-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    # imported here, not at the top: each recipe loads torch and Ray; `--help` must not wait for them
    if args.recipe == "tools":
        from launch.demos.tools import run_tools_demo

        run_tools_demo(run_dir, seed=args.seed, small=args.small)
    elif args.recipe == "arithmetic":
        from launch.demos.arithmetic import run_arithmetic_demo

        run_arithmetic_demo(run_dir, seed=args.seed, small=args.small)
    else:
        from launch.demos.preference import run_demo

        run_demo(run_dir, small=args.small)
    return 0
