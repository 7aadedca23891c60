"""Run directories: which ones a run may use (and what it leaves untouched), the tiny model left in
one, and the checkpoint a resume continues from (manifest checks, --from, abandoned-*)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from rlhf_dist.checkpoints.files import save_tree, write_checkpoint, write_json
from rlhf_dist.checkpoints.manifest import CheckpointIntegrityError
from rlhf_dist.checkpoints.run_dir import (
    MARKER,
    abandon_newer,
    checkpoint_dirs,
    claim_run_dir,
    completed_steps,
    is_ours,
    resume_checkpoint,
)
from rlhf_dist.checkpoints.run_lock import LOCK_FILE
from rlhf_dist.config.schema import TinyModelConfig
from rlhf_dist.errors import UserError


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (and every directory), to prove nothing changed."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def user_project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "config.yaml").write_text("my: own config\n")
    (root / "src" / "train.py").write_text("print('mine')\n")
    return root


def dataset_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text('{"prompt": "hi"}\n')
    (root / "dataset_info.json").write_text("{}")
    return root


# -- claiming a run dir -----------------------------------------------------------------------------


def test_a_new_run_dir_is_created_and_marked(tmp_path):
    run_dir = claim_run_dir(tmp_path / "a" / "run")
    marker = json.loads((run_dir / MARKER).read_text())
    assert marker["tool"] == "rlhf-dist" and {"version", "command", "created"} <= set(marker)
    assert is_ours(run_dir) and sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_ours(claim_run_dir(empty))


@pytest.mark.parametrize("make", [user_project, dataset_folder])
def test_a_folder_that_is_not_a_run_dir_of_ours_is_refused_untouched(tmp_path, make):
    folder = make(tmp_path / "folder")
    before = snapshot(folder)
    with pytest.raises(UserError) as refused:
        claim_run_dir(folder)
    message = str(refused.value)
    assert "non-empty directory that rlhf-dist did not create" in message and "nothing in it was changed" in message
    assert "new or empty directory" in message
    assert snapshot(folder) == before


def test_a_run_dir_with_completed_steps_is_refused(tmp_path):
    run_dir = claim_run_dir(tmp_path / "run")
    (run_dir / "config.yaml").write_text("steps: 3\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    before = snapshot(run_dir)
    with pytest.raises(UserError, match=r"already holds a run \(2 steps in metrics.jsonl\).*no checkpoint to resume"):
        claim_run_dir(run_dir)
    write_checkpoint(run_dir, 2, keep_last=1, write=_write(2))
    with pytest.raises(UserError, match=f"continue it with: rlhf-dist train --resume {run_dir}"):
        claim_run_dir(run_dir)
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith("checkpoints")} == before


def test_a_run_that_failed_before_its_first_step_leaves_a_reusable_dir(tmp_path):
    """What a run that died after opening its metrics leaves: our marker, config.yaml, an empty
    metrics.jsonl (or a partial line), a tiny model. The next run may use the dir as it is."""
    run_dir = claim_run_dir(tmp_path / "run")
    (run_dir / "config.yaml").write_text("steps: 3\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "reward/me')  # cut off mid-write: not a step
    (run_dir / "tiny-model").mkdir()
    assert completed_steps(run_dir) == 0
    marker = (run_dir / MARKER).read_text()
    assert claim_run_dir(run_dir) == run_dir
    assert (run_dir / MARKER).read_text() == marker, "the first run's marker is kept"


def test_older_run_dirs_and_dirs_nested_in_ours_are_ours(tmp_path):
    legacy = tmp_path / "legacy"  # written before the marker: our config.yaml + metrics.jsonl
    legacy.mkdir()
    (legacy / "config.yaml").write_text("steps: 3\n")
    (legacy / "metrics.jsonl").write_text("")
    assert claim_run_dir(legacy) == legacy
    demo = claim_run_dir(tmp_path / "demo")  # the demo's stages: DIR/sft inside a marked DIR
    (demo / "sft").mkdir()
    (demo / "sft" / "leftover.txt").write_text("x")
    assert claim_run_dir(demo / "sft") == demo / "sft"
    (demo / "sft" / "metrics.jsonl").write_text('{"step": 0}\n')  # once a stage has run, so has the demo
    with pytest.raises(UserError, match=r"already holds a run \(1 step in sft/metrics.jsonl\)"):
        claim_run_dir(demo)


def test_a_file_as_run_dir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        claim_run_dir(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- the tiny model left in a run dir ----------------------------------------------------------------


SMALL = TinyModelConfig(hidden_size=64, num_heads=1, intermediate_size=64)


def test_a_leftover_tiny_model_of_another_shape_is_rebuilt_for_a_new_run_and_refused_on_resume(tmp_path, capsys):
    from launch.run import resolve_model_path
    from rlhf_dist.config import load_config
    from rlhf_dist.models.tiny import make_tiny, tiny_mismatch

    cfg = load_config(None, [])
    run_dir = claim_run_dir(tmp_path / "run")
    make_tiny(run_dir / "tiny-model", SMALL, seed=0)  # left by an earlier attempt with another model.tiny
    with pytest.raises(UserError) as refused:
        resolve_model_path(cfg.model, cfg.seed, run_dir, resume=True)
    assert "disagrees with" in str(refused.value) and "hidden_size 64 (config: 128)" in str(refused.value)
    assert tiny_mismatch(run_dir / "tiny-model", SMALL, 0) is None, "refused: left as it was"

    path = resolve_model_path(cfg.model, cfg.seed, run_dir)
    assert "rebuilding" in capsys.readouterr().out
    assert path == str(run_dir / "tiny-model" / "policy")
    assert tiny_mismatch(run_dir / "tiny-model", cfg.model.tiny, cfg.seed) is None
    assert json.loads((Path(path) / "config.json").read_text())["hidden_size"] == 128
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE, MARKER, "tiny-model"], "no temp dir left"

    stamp = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(cfg.model, cfg.seed, run_dir, resume=True) == path
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == stamp, "a matching one is reused as it is"
    assert tiny_mismatch(run_dir / "tiny-model", cfg.model.tiny, cfg.seed + 1) == "seed 0 (config: 1)"


def test_make_tiny_refuses_a_foreign_folder_and_never_leaves_half_a_model(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from rlhf_dist.models.tiny import make_tiny

    folder = user_project(tmp_path / "folder")
    before = snapshot(folder)
    with pytest.raises(UserError, match="not empty and is not a tiny model"):
        make_tiny(folder, SMALL)
    assert snapshot(folder) == before

    out = make_tiny(tmp_path / "tiny", SMALL).policy.parent
    good = snapshot(out)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with pytest.raises(OSError):
        make_tiny(out, TinyModelConfig(), replace=True)
    assert snapshot(out) == good, "the old model is whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "tiny"], "no temp dir left"


# -- which checkpoint a resume continues from ---------------------------------------------------------


def _write(step: int):
    def write(tmp):
        return [save_tree({"w": torch.full((64,), float(step))}, tmp / "state.safetensors"),
                write_json(tmp / "driver_state.json", {"steps_done": step})]

    return write


def run_with_checkpoints(tmp_path: Path, *steps: int) -> Path:
    run_dir = claim_run_dir(tmp_path / "run")
    for step in steps:
        write_checkpoint(run_dir, step, keep_last=10, write=_write(step))
    return run_dir


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_continues_from_the_latest_intact_checkpoint(tmp_path):
    run_dir = run_with_checkpoints(tmp_path, 2, 4)
    assert resume_checkpoint(run_dir).name == "step-000004"
    assert resume_checkpoint(run_dir, verify=True).name == "step-000004"


def test_a_damaged_latest_checkpoint_names_the_file_the_previous_good_one_and_the_command(tmp_path):
    run_dir = run_with_checkpoints(tmp_path, 2, 4, 6)
    corrupt(run_dir / "checkpoints" / "step-000006" / "state.safetensors")
    (run_dir / "checkpoints" / "step-000004" / "driver_state.json").unlink()
    before = snapshot(run_dir)
    with pytest.raises(CheckpointIntegrityError) as failure:
        resume_checkpoint(run_dir)
    message = str(failure.value)
    assert "step-000006 is damaged: state.safetensors does not match its sha256" in message
    assert "The previous good checkpoint is step-000002" in message
    assert f"rlhf-dist train --resume {run_dir} --from step-000002" in message
    assert snapshot(run_dir) == before, "a refused resume moves nothing"

    corrupt(run_dir / "checkpoints" / "step-000002" / "state.safetensors")
    with pytest.raises(CheckpointIntegrityError, match="No earlier checkpoint is intact; start a new run"):
        resume_checkpoint(run_dir)


def test_from_step_n_moves_the_newer_checkpoints_aside_so_a_plain_resume_follows_the_new_line(tmp_path):
    run_dir = run_with_checkpoints(tmp_path, 2, 4, 6)
    corrupt(run_dir / "checkpoints" / "step-000006" / "state.safetensors")
    newer = {name: snapshot(run_dir / "checkpoints" / name) for name in ("step-000004", "step-000006")}
    for choice in ("step-000002", "step-2", str(run_dir / "checkpoints" / "step-000002")):
        assert resume_checkpoint(run_dir, choice).name == "step-000002"
    chosen = resume_checkpoint(run_dir, "step-2")
    target = abandon_newer(run_dir, chosen)
    assert target.parent == run_dir / "checkpoints" and target.name.startswith("abandoned-")
    assert {name: snapshot(target / name) for name in newer} == newer, "moved whole, never deleted"
    assert [c.name for c in checkpoint_dirs(run_dir)] == ["step-000002"]
    assert resume_checkpoint(run_dir).name == "step-000002"
    assert abandon_newer(run_dir, chosen) is None


def test_from_names_a_checkpoint_of_this_run_or_says_which_there_are(tmp_path):
    run_dir = run_with_checkpoints(tmp_path, 2, 4)
    with pytest.raises(UserError, match="has no complete checkpoint step-3; it has step-000002, step-000004"):
        resume_checkpoint(run_dir, "step-3")
    other = run_with_checkpoints(tmp_path / "other", 2)
    with pytest.raises(UserError, match="is not a complete checkpoint of"):
        resume_checkpoint(run_dir, str(other / "checkpoints" / "step-000002"))
    corrupt(run_dir / "checkpoints" / "step-000002" / "state.safetensors")
    with pytest.raises(CheckpointIntegrityError) as failure:
        resume_checkpoint(run_dir, "step-000002")
    assert "step-000002 is damaged" in str(failure.value)
    assert "No earlier checkpoint is intact; pick another with --from (step-000004)" in str(failure.value)
