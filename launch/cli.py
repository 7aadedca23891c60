"""The `rlhf-dist` command.

Errors a user can cause (`rlhf_dist.errors.UserError`) print one short message and exit 2;
`--debug` anywhere on the line shows the traceback instead. Heavy imports (torch, transformers,
Ray) happen inside the subcommands, so `config show` answers in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from launch.help_text import STAGE_EXAMPLES, TRAIN_EXAMPLES
from rlhf_dist.errors import UserError

EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    from launch import console
    from launch.submit_cli import with_default_kind

    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    parser = build_parser()
    argv = with_default_kind(argv)
    unknown = unknown_command(parser, argv)
    if unknown:
        print(f"rlhf-dist: error: {unknown}", file=sys.stderr)
        return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    args.debug = debug
    console.begin(verbose)  # signals, and library logs off the terminal (RUN_DIR/logs/) unless --verbose
    try:
        return args.handler(args) or 0
    except console.RunStopped as exc:  # SIGINT/SIGTERM during a run: where it stopped, how to go on
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # SIGINT/SIGTERM anywhere else
        if debug:
            raise
        print(f"rlhf-dist: {'stopped by SIGTERM' if console.exit_code() == console.EXIT_SIGTERM else 'interrupted'}",
              file=sys.stderr)
        return console.exit_code()
    except UserError as exc:
        if debug:
            raise
        print(f"rlhf-dist: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # not foreseen: still one line (CONTRACTS: no traceback without --debug)
        if debug:
            raise
        first = (str(exc).strip() or "no message").splitlines()[0]
        print(f"rlhf-dist: failed: {type(exc).__name__}: {first}; rerun with --debug for the traceback", file=sys.stderr)
        return 1
    finally:
        console.end()


def unknown_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """``unknown command 'trian'; did you mean 'train'?`` for a misspelled command (or `config`
    action), None when the words name real ones (argparse reports everything else)."""
    import difflib

    words = [a for a in argv if not a.startswith("-")]
    for word in words:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not found:
            return None
        choices = found[0].choices
        if word not in choices:
            close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"the commands are: {', '.join(choices)}"
            return f"unknown command {word!r}; {hint} (see {parser.prog} --help)"
        parser = choices[word]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-dist",
        description="Distributed RLHF on Ray. Add --verbose anywhere to see every library's log on the terminal "
        "(otherwise in RUN_DIR/logs/), --debug to see tracebacks. `rlhf-dist COMMAND --help` shows examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        help="print every field of a train config at its schema default, under its description (no FILE or overrides)",
    )
    show.set_defaults(handler=_config_show)

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

    demo = commands.add_parser(
        "demo", help="end-to-end recipes on the tiny model: preference (SFT -> RM -> PPO) or arithmetic (SFT -> GRPO)"
    )
    demo.add_argument(
        "recipe", nargs="?", default="preference", choices=("preference", "arithmetic"),
        help="preference (default): SFT, a reward model and PPO against a gold preference rule; "
        "arithmetic: SFT then GRPO with the verifiable math rule, test accuracy before and after",
    )
    demo.add_argument("--run-dir", default=None, help="output directory (default: runs/demo-<recipe>-<timestamp>)")
    demo.add_argument("--seed", type=int, default=0, help="arithmetic: seed of the data split, the model and the run")
    demo.add_argument("--small", action="store_true", help="a smaller, faster version (used by the tests)")
    demo.set_defaults(handler=_demo)

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

    from launch.monitor import add_monitor_parser
    from launch.plot_cli import add_plot_parser
    from launch.submit_cli import add_job_parsers

    add_job_parsers(commands, _address_args)  # submit KIND, status, logs, stop
    add_plot_parser(commands)  # plot RUN_DIR [RUN_DIR ...] [-o FILE]
    add_monitor_parser(commands)  # monitor [--address URL]: our Grafana dashboard, Prometheus

    tiny = commands.add_parser(
        "make-tiny", help="write a tiny random-init policy, reward model and tokenizer (no download)"
    )
    tiny.add_argument("dir", help="output directory (new or empty); gets policy/, reward/ and tiny.json")
    tiny.add_argument("--force", action="store_true", help="replace DIR even if it is not empty (built beside it, then swapped in: never half a model)")
    tiny.add_argument("--arch", choices=["llama", "qwen2"], default="llama", help="model architecture (default: llama)")
    tiny.add_argument("--vocab-size", type=int, default=512, help="tokenizer and embedding size (default: 512)")
    tiny.add_argument("--hidden-size", type=int, default=128, help="64 x heads (head_dim 64 for vLLM)")
    tiny.add_argument("--layers", type=int, default=2, help="decoder layers (default: 2)")
    tiny.add_argument("--heads", type=int, default=2, help="attention heads (default: 2)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    tiny.set_defaults(handler=_make_tiny)
    return parser


def _address_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="the head's dashboard URL (default: $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)",
    )
    parser.add_argument("--token", default=None, help="Ray auth token (default: $RAY_AUTH_TOKEN)")


def split_config_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[FILE] [key=value ...]`` -> (file or None, overrides)."""
    files = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(files) > 1:
        raise UserError(
            f"expected at most one config file, got {files}; overrides look like key=value"
        )
    return (files[0] if files else None), overrides


def _config_show(args: argparse.Namespace) -> int:
    from rlhf_dist.config import dump_config, dump_defaults, load_config

    if args.defaults:
        if args.items:
            raise UserError(
                f"--defaults prints the schema's defaults alone; drop {' '.join(args.items)!r} "
                "(or drop --defaults to see a resolved config)"
            )
        print(dump_defaults(), end="")
        return 0
    path, overrides = split_config_args(args.items)
    print(dump_config(load_config(path, overrides)), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from launch.run import train
    from rlhf_dist.config import load_config

    from launch.run import load_resume_config
    from rlhf_dist.remote import ActorFailed, RunFailed

    progress = False if args.no_progress else None
    try:
        if args.resume is not None:
            run_dir = args.resume or args.run_dir
            if not run_dir:
                raise UserError("--resume needs the run directory: --resume RUN_DIR")
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
        train(cfg, Path(args.run_dir) if args.run_dir else None, progress=progress, force=args.force)
    except (RunFailed, ActorFailed) as exc:
        if args.debug:
            raise
        print(f"rlhf-dist: run failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _stage(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from launch.console import outputs_line
    from launch.stages import run_stage
    from rlhf_dist.config import load_config
    from rlhf_dist.config.stages import StageConfig

    path, overrides = split_config_args(args.items)
    cfg = load_config(path, overrides, schema=StageConfig)
    name = cfg.name or args.kind
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_stage(args.kind, cfg, run_dir)
    print(f"{args.kind} model written to {result.model_dir}")
    print(outputs_line(run_dir, {"model/": "the trained model in Hugging Face format"}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"demo-{args.recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.recipe == "arithmetic":
        from launch.demo_arithmetic import run_arithmetic_demo

        run_arithmetic_demo(run_dir, seed=args.seed, small=args.small)
    else:
        from launch.demo import run_demo

        run_demo(run_dir, small=args.small)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from launch import cluster
    from rlhf_dist.config import load_config
    from rlhf_dist.placement import plan_placement

    path, overrides = split_config_args(args.items)
    cfg = load_config(path, overrides)
    if args.address and args.nodes:
        raise UserError("give --address (a live cluster) or --nodes (written out), not both")
    if args.nodes:
        nodes, where = cluster.parse_nodes(args.nodes), "the nodes given"
    elif args.address:
        nodes, where = cluster.state_api_nodes(args.address, args.token), f"the cluster at {args.address}"
    else:
        from launch.preflight import warn_local_plan

        warn_local_plan(cfg)
        nodes, where = cluster.local_nodes(cfg), "this machine (a local Ray)"
    plan = plan_placement(cfg, nodes)
    print(f"placement for {where}:\n{plan.table()}")
    from rlhf_dist.memory_plan import memory_table, plan_memory

    print(memory_table(cfg, plan, plan_memory(cfg, plan)))
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pydantic import ValidationError

    from rlhf_dist.config import TinyModelConfig
    from rlhf_dist.tiny import make_tiny

    try:
        spec = TinyModelConfig(
            arch=args.arch,
            vocab_size=args.vocab_size,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            num_heads=args.heads,
        )
    except ValidationError as exc:
        raise UserError(f"bad tiny-model size: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    if spec.hidden_size % spec.num_heads:
        raise UserError(f"--hidden-size {spec.hidden_size} is not divisible by --heads {spec.num_heads}")
    out = Path(args.dir)
    if not args.force and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"make-tiny: {out} already exists and is not empty; nothing was changed. Give a new or "
                        "empty directory, or add --force to replace it")
    paths = make_tiny(out, spec, seed=args.seed, replace=args.force)
    print(f"policy model: {paths.policy}\nreward model: {paths.reward}")
    return 0
