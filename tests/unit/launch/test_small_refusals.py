"""The smaller items of a user's first hour (issue 21, item 10): overrides on both sides of a flag,
YAML 1.1 booleans in string fields, a reward path given where a list belongs, the stage commands'
defaults, and a second signal while a run stops."""

import pytest

import launch.roles
from launch.cli.main import main


def test_overrides_on_both_sides_of_a_flag_are_one_config(capsys):
    assert main(["config", "show", "steps=5", "--for", "train", "learner.optimizer.lr=1e-5"]) == 0
    out = capsys.readouterr().out
    assert "steps: 5" in out and "lr: 1.0e-05" in out
    with pytest.raises(SystemExit) as info:  # anything else is still argparse's error, exit 2
        main(["config", "show", "--bogus"])
    assert info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_yaml_boolean_in_a_string_field_says_to_quote_it(capsys):
    assert main(["config", "show", "name=yes"]) == 2
    assert ("name: got the boolean true: YAML reads yes/no/on/off/true/false unquoted as booleans; quote the value "
            "to keep it a string") in capsys.readouterr().err


def test_a_module_function_given_as_the_components_shows_the_list_form(capsys):
    assert main(["config", "show", "reward.components=my_rewards:score"]) == 2
    assert ("reward.components: got 'my_rewards:score'; it is a list of components, e.g. "
            "reward.components=[{type: python, path: 'my_rewards:score'}]") in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sft", "rm", "dpo"])
def test_the_stage_commands_show_their_defaults(command, capsys):
    assert main(["config", "show", "--defaults", "--for", command]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# Every field of `rlhf-dist {command}` at its schema default") and "\nepochs: " in out


def test_a_second_signal_while_the_actors_stop_does_not_cut_the_stop_short(monkeypatch):
    stopped = []

    def interrupted(actors, groups):
        raise KeyboardInterrupt  # the second Ctrl-C, mid-release

    monkeypatch.setattr(launch.roles, "release", interrupted)
    monkeypatch.setattr(launch.roles.ray, "shutdown", lambda: stopped.append(True))
    roles = type("R", (), {"all": lambda self: [], "placement_groups": []})()
    launch.roles.stop_roles(roles, shutdown=True)  # no KeyboardInterrupt escapes: the stop line still comes
    assert stopped == [True]
