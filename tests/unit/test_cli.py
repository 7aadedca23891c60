"""The `rlhf-dist` command as a user meets it: exit codes, short errors, --debug tracebacks."""

import subprocess
import sys

import yaml


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=60)


def test_config_show_prints_yaml_with_overrides():
    out = run_cli("config", "show", "steps=3", "learner.zero_stage=3")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["steps"] == 3 and shown["learner"]["zero_stage"] == 3


def test_bad_config_exits_2_without_traceback():
    out = run_cli("config", "show", "learner.zero_stage=9")
    assert out.returncode == 2
    assert "learner.zero_stage: got 9" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback():
    out = run_cli("config", "show", "learner.zero_stage=9", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_missing_file_and_two_files():
    out = run_cli("config", "show", "does-not-exist.yaml")
    assert out.returncode == 2 and "does-not-exist.yaml' does not exist" in out.stderr
    out = run_cli("config", "show", "a.yaml", "b.yaml")
    assert out.returncode == 2 and "at most one config file" in out.stderr
