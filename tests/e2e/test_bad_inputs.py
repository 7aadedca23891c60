"""Bad input met through `rlhf-dist train`, the way a user meets it: exit code 2, one line naming
what is wrong and how to fix it, before Ray or any actor starts, and nothing already written lost.

(The config, data and reward cases each have their own, more detailed tests in test_config.py,
test_data.py and test_rewards.py; these are the paths, tokenizer, run-directory and resume cases.)
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.cli.main import main
from rlhf_dist.checkpoints.files import checkpoint_dirs, save_tree, write_checkpoint, write_json
from rlhf_dist.checkpoints.run_dir import MARKER, claim_run_dir
from rlhf_dist.checkpoints.run_lock import LOCK_FILE, release_run_dir
from rlhf_dist.errors import UserError
from tests.unit.checkpoints.test_run_dir import dataset_folder, snapshot, user_project


def left_behind(path: Path) -> Path:
    """A run dir as a run that died leaves it: claimed, its lock gone with its process (here, this
    test process hands it on at once, so the CLI it starts may take it)."""
    run_dir = claim_run_dir(path)
    release_run_dir(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model  # the session's (tests/conftest.py); tests copy it before changing anything


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every case here must fail before Ray starts: make starting it an error."""
    import launch.roles
    import launch.stages

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for an input that should have been rejected first")

    monkeypatch.setattr(launch.roles, "start_ray_cpus", refuse)  # what `train` reaches through start_ray
    monkeypatch.setattr(launch.stages, "start_ray_cpus", refuse)  # what the stages call


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
    from rlhf_dist.models.loading import load_tokenizer

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


# -- run directories, make-tiny, damaged checkpoints: the CLI as a subprocess, files checksummed ------


def cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[2])
    assert "Traceback" not in out.stdout + out.stderr
    return out


@pytest.mark.parametrize("make", [user_project, dataset_folder])
def test_a_folder_that_is_not_ours_as_run_dir_is_refused_and_left_byte_identical(tmp_path, make):
    folder = make(tmp_path / "folder")
    before = snapshot(folder)
    out = cli("train", "--run-dir", str(folder))
    assert out.returncode == 2
    assert "is a non-empty directory that rlhf-dist did not create" in out.stderr and "nothing in it was changed" in out.stderr
    assert snapshot(folder) == before


def test_make_tiny_refuses_a_non_empty_dir_and_force_replaces_it(tmp_path):
    folder = user_project(tmp_path / "folder")
    before = snapshot(folder)
    out = cli("make-tiny", str(folder))
    assert out.returncode == 2 and "is not empty; nothing was changed" in out.stderr and "--force" in out.stderr
    assert snapshot(folder) == before
    out = cli("make-tiny", str(folder), "--hidden-size", "64", "--heads", "1", "--force")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["policy", "reward", "tiny.json"]
    assert json.loads((folder / "policy" / "config.json").read_text())["hidden_size"] == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"], "no temp or .old dir left beside it"


def _run_dir_with_tiny(tmp_path: Path, tiny) -> Path:
    run_dir = left_behind(tmp_path / "run")
    shutil.copytree(tiny.policy.parent, run_dir / "tiny-model")  # the default shape, hidden_size 128
    return run_dir


REACHED_RAY = "stopped where Ray would start (test)"


@pytest.fixture
def stop_at_ray(monkeypatch):
    """Runs that pass every check stop where Ray would start, with a line of their own."""
    import launch.run

    def start_ray(cfg):
        raise UserError(REACHED_RAY)

    monkeypatch.setattr(launch.run, "start_ray", start_ray)  # where `train` calls it


def test_a_leftover_tiny_model_of_another_shape_is_rebuilt_by_a_new_run(tmp_path, tiny, capsys, stop_at_ray):
    run_dir = _run_dir_with_tiny(tmp_path, tiny)  # left by an attempt that failed before its first step
    code = main(["train", "model.tiny.hidden_size=64", "model.tiny.num_heads=1", "--run-dir", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and REACHED_RAY in err and "Traceback" not in err
    assert "rebuilding" in out and "hidden_size 128 (config: 64)" in out
    assert json.loads((run_dir / "tiny-model" / "policy" / "config.json").read_text())["hidden_size"] == 64
    assert json.loads((run_dir / "tiny-model" / "tiny.json").read_text())["spec"]["hidden_size"] == 64


def test_a_leftover_tiny_model_of_another_shape_is_refused_on_resume(tmp_path, tiny):
    from rlhf_dist.config import dump_config, load_config

    run_dir = _run_dir_with_tiny(tmp_path, tiny)
    (run_dir / "config.yaml").write_text(dump_config(load_config(None, ["model.tiny.hidden_size=64", "model.tiny.num_heads=1"])))
    write_checkpoint(run_dir, 2, keep_last=2, write=_fake_state(2))
    before = snapshot(run_dir)
    out = cli("train", "--resume", str(run_dir))
    assert out.returncode == 2
    assert "disagrees with" in out.stderr and "hidden_size 128 (config: 64)" in out.stderr and "start a new run" in out.stderr
    after = snapshot(run_dir)
    assert after.pop(LOCK_FILE) != before.pop(LOCK_FILE)  # the lock names its last holder: the refused resume
    assert after == before


def test_a_run_that_failed_before_its_first_step_does_not_block_a_rerun(tmp_path, capsys, monkeypatch):
    """A run that fails where Ray starts (after claiming the dir, building the tiny model and writing
    config.yaml), or one that died after opening metrics.jsonl, leaves a dir the same command may
    use again: the rerun passes every check and gets as far as starting Ray."""
    import launch.run

    def ray_fails(cfg):
        raise UserError("Ray did not start (test)")

    monkeypatch.setattr(launch.run, "start_ray", ray_fails)
    run_dir = tmp_path / "run"
    code, err = train(capsys, "--run-dir", str(run_dir))
    assert code == 2 and "Ray did not start" in err
    assert {MARKER, "config.yaml", "tiny-model"} <= {p.name for p in run_dir.iterdir()}

    died = left_behind(tmp_path / "died")  # died after opening its metrics, before step 0 ended
    (died / "config.yaml").write_text("steps: 3\n")
    (died / "metrics.jsonl").write_text('{"step": 0, "rew')
    (died / "tensorboard").mkdir()
    legacy = tmp_path / "legacy"  # the same, from before the marker
    legacy.mkdir()
    (legacy / "config.yaml").write_text("steps: 3\n")
    (legacy / "metrics.jsonl").write_text("")

    def reached_ray(cfg):
        raise UserError(REACHED_RAY)

    monkeypatch.setattr(launch.run, "start_ray", reached_ray)
    for again in (run_dir, died, legacy):
        code, err = train(capsys, "--run-dir", str(again))
        assert code == 2 and REACHED_RAY in err, err
        assert (again / "config.yaml").read_text().startswith("name:")


def test_config_yaml_is_written_only_after_every_check(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = train(capsys, "rollout.prompts_per_step=4096", "learner.mini_batch_size=4096", "--run-dir", str(run_dir))
    assert code == 2 and "fewer than rollout.prompts_per_step=4096" in err
    assert run_dir.is_dir() and not (run_dir / "config.yaml").exists()


def _fake_state(step: int):
    """A stand-in for a run checkpoint's files (the real ones are checked in tests/e2e/test_resume_from.py)."""
    def write(tmp):
        return [save_tree({"w": torch.full((64,), float(step))}, tmp / "state.safetensors"),
                write_json(tmp / "driver_state.json", {"steps_done": step})]

    return write


def _run_with_checkpoints(tmp_path: Path, *steps: int) -> Path:
    from rlhf_dist.config import dump_config, load_config

    run_dir = left_behind(tmp_path / "run")
    (run_dir / "config.yaml").write_text(dump_config(load_config(None, [])))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(max(steps))))
    for step in steps:
        write_checkpoint(run_dir, step, keep_last=5, write=_fake_state(step))
    return run_dir


def test_a_corrupt_latest_checkpoint_names_the_file_and_the_command_for_the_previous_good_one(tmp_path):
    run_dir = _run_with_checkpoints(tmp_path, 2, 4)
    state = run_dir / "checkpoints" / "step-000004" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-8] ^= 0x01  # one bit of one byte
    state.write_bytes(bytes(data))
    before = snapshot(run_dir)
    out = cli("train", "--resume", str(run_dir))
    assert out.returncode == 2
    assert "step-000004 is damaged: state.safetensors does not match its sha256" in out.stderr
    assert "The previous good checkpoint is step-000002" in out.stderr
    assert f"rlhf-dist train --resume {run_dir} --from step-000002" in out.stderr
    assert snapshot(run_dir) == before


def test_resume_from_step_n_moves_the_newer_checkpoints_to_abandoned(tmp_path, capsys, stop_at_ray):
    run_dir = _run_with_checkpoints(tmp_path, 2, 4, 6)
    newer = {name: snapshot(run_dir / "checkpoints" / name) for name in ("step-000004", "step-000006")}
    code, err = train(capsys, "--resume", str(run_dir), "--from", "step-000007")
    assert code == 2 and "has no complete checkpoint step-000007; it has step-000002, step-000004, step-000006" in err
    code, err = train(capsys, "--resume", str(run_dir), "--from", "step-2", "--verify")
    assert code == 2 and REACHED_RAY in err
    (abandoned,) = (run_dir / "checkpoints").glob("abandoned-*")
    assert {name: snapshot(abandoned / name) for name in newer} == newer
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-000002"]


def test_from_and_verify_need_resume(capsys):
    code, err = train(capsys, "--from", "step-2")
    assert code == 2 and "add --resume RUN_DIR" in err
