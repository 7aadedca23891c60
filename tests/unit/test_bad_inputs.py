"""Bad input met through `rlhf-dist train`, the way a user meets it: exit code 2, one line naming
what is wrong and how to fix it, before Ray or any actor starts, and nothing already written lost.

(The config, data and reward cases each have their own, more detailed tests in test_config.py,
test_data.py and test_rewards.py; these are the paths, tokenizer, run-directory and resume cases.)
"""

import json
import os
from pathlib import Path

import pytest

from launch.cli import main
from rlhf_dist.tiny import make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every case here must fail before Ray starts: make starting it an error."""
    import launch.roles

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for an input that should have been rejected first")

    monkeypatch.setattr(launch.roles, "start_ray_cpus", refuse)


def train(capsys, *args):
    code = main(["train", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_model_directory_missing(capsys, tmp_path):
    code, err = train(capsys, "model.path=/no/such/model", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "model.path '/no/such/model' does not exist" in err


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _strip_special(model_dir: Path, *names: str) -> None:
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for name in names:
        config.pop(name, None)
    config_path.write_text(json.dumps(config))
    special = model_dir / "special_tokens_map.json"
    if special.exists():
        data = json.loads(special.read_text())
        special.write_text(json.dumps({k: v for k, v in data.items() if k not in names}))


def test_tokenizer_with_neither_pad_nor_eos(capsys, tiny, tmp_path):
    model = _copy_model(tiny.policy, tmp_path / "model")
    _strip_special(model, "pad_token", "eos_token")
    code, err = train(capsys, f"model.path={model}", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "neither a pad nor an eos token" in err and "tokenizer_config.json" in err


def test_tokenizer_without_pad_uses_eos_with_one_warning(tiny, tmp_path, caplog):
    from rlhf_dist.models import load_tokenizer

    model = _copy_model(tiny.policy, tmp_path / "model")
    _strip_special(model, "pad_token")
    tokenizer = load_tokenizer(model)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None
    assert sum("no pad token" in r.message for r in caplog.records) == 1


def test_run_directory_not_writable(capsys, tmp_path):
    if os.geteuid() == 0:  # root ignores file modes; sysfs refuses new directories even to root
        run_dir = "/sys/rlhf-dist-run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        run_dir = str(locked / "run")
    code, err = train(capsys, "--run-dir", run_dir)
    assert code == 2 and "cannot write to the run directory" in err and "--run-dir" in err


def test_run_directory_of_another_run_is_not_overwritten(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    code, err = train(capsys, "--run-dir", str(run_dir))
    assert code == 2 and "already holds a run" in err
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 0}\n'


def test_prompt_file_empty_and_malformed(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = train(capsys, f"data.prompts={empty}", "--run-dir", str(tmp_path / "a"))
    assert code == 2 and "holds no prompts" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": "cut off\n')
    code, err = train(capsys, f"data.prompts={broken}", "--run-dir", str(tmp_path / "b"))
    assert code == 2 and "line 2" in err


def test_resume_without_a_checkpoint(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code, err = train(capsys, "--resume", str(run_dir))
    assert code == 2 and "no config.yaml" in err
    (run_dir / "config.yaml").write_text("steps: 3\n")
    (run_dir / "checkpoints" / "step-000002.tmp").mkdir(parents=True)  # a checkpoint cut off mid-write
    code, err = train(capsys, "--resume", str(run_dir))
    assert code == 2 and "no complete checkpoint" in err and "start a new run" in err


def test_resume_with_overrides_is_refused(capsys, tmp_path):
    code, err = train(capsys, "steps=9", "--resume", str(tmp_path))
    assert code == 2 and "--resume continues with RUN_DIR/config.yaml" in err
