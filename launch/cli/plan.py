"""`rlhf-dist plan`: where each role's actors would run, and the memory each GPU bundle needs."""

from __future__ import annotations

import argparse

from launch import cluster
from launch.cli.args import split_config_args
from launch.preflight import warn_local_plan
from rlhf_dist.config import load_config
from rlhf_dist.errors import UserError
from rlhf_dist.planning.memory_plan import memory_table, plan_memory
from rlhf_dist.planning.placement import plan_placement


def add_plan_parser(commands: argparse._SubParsersAction) -> None:
    plan = commands.add_parser("plan", help="print where each role's actors would run (placement groups per node) and the GiB each GPU bundle needs")
    plan.add_argument(
        "items", nargs="*", metavar="[CONFIG] [key=value ...]",
        help="the training config to plan, as for train (default: the embedded tiny run), then dotted overrides",
    )
    plan.add_argument(
        "--address", default=None,
        help="a head's dashboard URL (http://HEAD:8265): plan for its live nodes (default: this machine, no Ray)",
    )
    plan.add_argument("--token", default=None, help="Ray auth token for --address (default: $RAY_AUTH_TOKEN, ~/.ray/auth_token)")
    plan.add_argument("--nodes", default=None, metavar="NAME:CPUS:GPUS[:GPU_GIB],...",
                      help="plan for nodes written out, e.g. head:8:0,gpu1:32:8:80 (GPU_GIB: memory per GPU, default 80)")
    plan.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:

    path, overrides = split_config_args(args.items)
    cfg = load_config(path, overrides)
    if args.address and args.nodes:
        raise UserError("give --address (a live cluster) or --nodes (written out), not both")
    if args.nodes:
        nodes, where = cluster.parse_nodes(args.nodes), "the nodes given"
    elif args.address:
        nodes, where = cluster.state_api_nodes(args.address, args.token), f"the cluster at {args.address}"
    else:
        warn_local_plan(cfg)
        nodes, where = cluster.local_nodes(cfg), "this machine (a local Ray)"
    plan = plan_placement(cfg, nodes)
    print(f"placement for {where}:\n{plan.table()}")

    print(memory_table(cfg, plan, plan_memory(cfg, plan)))
    return 0
