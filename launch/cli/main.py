"""The `rlhf-dist` command.

Errors a user can cause (`rlhf_dist.errors.UserError`) print one short message and exit 2;
`--debug` anywhere on the line shows the traceback instead. Heavy imports (torch, transformers,
Ray) happen inside the subcommands, so `config show` answers in well under a second.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence

from launch import console
from launch.cli.args import EXIT_USER_ERROR, address_args
from launch.cli.config import add_config_parser
from launch.cli.demo import add_demo_parser
from launch.cli.make_tiny import add_make_tiny_parser
from launch.cli.monitor import add_monitor_parser
from launch.cli.plan import add_plan_parser
from launch.cli.plot import add_plot_parser
from launch.cli.submit import add_job_parsers, with_default_kind
from launch.cli.supervised import add_stage_parsers
from launch.cli.train import add_train_parser
from rlhf_dist.errors import UserError


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush finds no closed pipe either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    parser = build_parser()
    argv = with_default_kind(argv)
    unknown = unknown_command(parser, argv)
    if unknown:
        print(f"rlhf-dist: error: {unknown}", file=sys.stderr)
        return EXIT_USER_ERROR
    args, extra = parser.parse_known_args(argv)
    # Overrides after a flag (`train cfg.yaml steps=5 --run-dir R lr=1e-5`) belong with the ones before it.
    if extra and hasattr(args, "items") and all("=" in e and not e.startswith("-") for e in extra):
        args.items = [*args.items, *extra]
    elif extra:
        parser.parse_args(argv)  # argparse's own error ("unrecognized arguments: ..."), exit 2
    args.debug = debug
    console.begin(verbose)  # signals, and library logs off the terminal (RUN_DIR/logs/) unless --verbose
    try:
        return args.handler(args) or 0
    except BrokenPipeError:  # `rlhf-dist status JOB | head -1`: the reader left; end quietly
        _silence_stdout()
        return 0
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
    add_config_parser(commands)  # config show
    add_train_parser(commands)  # train [CONFIG] [k=v ...] [--resume RUN_DIR]
    add_stage_parsers(commands)  # sft, rm, dpo
    add_demo_parser(commands)  # demo [preference|arithmetic|tools]
    add_plan_parser(commands)  # plan [CONFIG] [--address URL | --nodes ...]
    add_job_parsers(commands, address_args)  # submit KIND, status, logs, stop
    add_plot_parser(commands)  # plot RUN_DIR [RUN_DIR ...] [-o FILE]
    add_monitor_parser(commands)  # monitor [--address URL]: our Grafana dashboard, Prometheus
    add_make_tiny_parser(commands)  # make-tiny DIR
    return parser
