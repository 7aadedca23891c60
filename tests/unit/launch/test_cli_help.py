"""Help that teaches: examples in `train --help`, every positional argument documented, and a
misspelled command answered with the nearest real one."""

import argparse
import subprocess
import sys

import pytest

from launch.cli.main import build_parser, unknown_command


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=60)


def subparsers(parser, path=("rlhf-dist",)):
    """(command path, parser) for every command and nested action."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subparsers(sub, (*path, name))


def test_train_help_shows_examples_of_each_way_to_start():
    out = run_cli("train", "--help")
    assert out.returncode == 0
    examples = out.stdout.split("examples:")[1]
    assert "rlhf-dist train examples/gsm8k.yaml" in examples  # a config file
    assert "rlhf-dist train steps=50 algorithm.name=rloo" in examples  # overrides
    assert "rlhf-dist train --resume runs/" in examples and "--from step-10" in examples
    assert "rlhf-dist config show" in examples and "--defaults" in examples
    assert "--verbose" in out.stdout and "logs/" in out.stdout


COMMANDS = dict(subparsers(build_parser()))


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_positional_argument_is_documented(path):
    positionals = [a for a in COMMANDS[path]._actions if not a.option_strings]
    for action in positionals:
        assert action.help, f"{' '.join(path)}: positional {action.metavar or action.dest!r} has no help text"


def test_a_misspelled_command_suggests_the_nearest_one():
    out = run_cli("trian", "steps=3")
    assert out.returncode == 2
    assert "unknown command 'trian'; did you mean 'train'?" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_misspelled_action_and_an_unrelated_word():
    parser = build_parser()
    assert "unknown command 'shwo'; did you mean 'show'?" in unknown_command(parser, ["config", "shwo"])
    assert "did you mean 'make-tiny'?" in unknown_command(parser, ["make-tini", "DIR"])
    listed = unknown_command(parser, ["xyzzy"])
    assert "the commands are: config, train, sft" in listed
    # real commands, their arguments and options are argparse's business
    assert unknown_command(parser, ["train", "steps=3", "--run-dir", "x"]) is None
    assert unknown_command(parser, ["config", "show", "my.yaml"]) is None
    assert unknown_command(parser, []) is None
