"""Checkpoint files and directories: exact round trips, no unpickling, atomic commits, a full disk,
manifests written while writing and checked before a resume."""

import errno
import json
import math

import pytest
import torch

import rlhf_dist.checkpoints.files as ckpt
from rlhf_dist.checkpoints.files import (
    CheckpointError,
    checkpoint_dirs,
    load_tree,
    rng_state,
    save_tree,
    set_rng_state,
    write_checkpoint,
    write_json,
)
from rlhf_dist.checkpoints.manifest import CheckpointIntegrityError, verify_checkpoint


def test_tree_round_trip_keeps_types_values_and_shared_tensors(tmp_path):
    shared = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    tree = {
        "state": {0: {"exp_avg": shared, "step": torch.tensor(3.0)}, 1: {"exp_avg": shared}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 1]}],
        "flags": {True: None, "inf": math.inf, "nan": math.nan},
        "shape": torch.Size([2, 3]), "dtype": torch.bfloat16, "names": {"a", "b"},
        "half": torch.ones(4, dtype=torch.float16),
    }
    path = tmp_path / "t.safetensors"
    save_tree(tree, path)
    back = load_tree(path)
    assert back["state"][0]["step"].item() == 3.0 and 0 in back["state"]
    assert torch.equal(back["state"][1]["exp_avg"], shared)
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["flags"][True] is None and back["flags"]["inf"] == math.inf and math.isnan(back["flags"]["nan"])
    assert back["shape"] == torch.Size([2, 3]) and back["dtype"] is torch.bfloat16 and back["names"] == {"a", "b"}
    assert back["half"].dtype == torch.float16


def test_the_file_is_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    save_tree({"w": torch.ones(3)}, tmp_path / "t.safetensors")
    assert [torch.equal(v, torch.ones(3)) for v in load_file(tmp_path / "t.safetensors").values()] == [True]


def test_unknown_objects_are_refused_when_saving(tmp_path):
    class Custom:
        pass

    with pytest.raises(CheckpointError, match="cannot write a .*Custom"):
        save_tree({"x": Custom()}, tmp_path / "t.safetensors")


def test_a_file_naming_another_type_is_refused_not_instantiated(tmp_path):
    from safetensors.torch import save_file

    evil = {"__object__": "os.system", "state": {"__dict__": []}}
    save_file({}, str(tmp_path / "evil.safetensors"), metadata={"rlhf_dist_tree": json.dumps(evil)})
    with pytest.raises(CheckpointError, match="does not load"):
        load_tree(tmp_path / "evil.safetensors")


def test_a_damaged_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_tree({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="not a readable rlhf-dist checkpoint"):
        load_tree(path)


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    save_tree(rng_state(), tmp_path / "rng.safetensors")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_tree(tmp_path / "rng.safetensors"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


def _write(step_value):
    def write(tmp):
        save_tree({"w": torch.full((4,), float(step_value))}, tmp / "state.safetensors")
        (tmp / "driver_state.json").write_text(json.dumps({"steps_done": step_value}))

    return write


def test_commits_are_atomic_and_only_the_last_n_are_kept(tmp_path):
    for step in (2, 4, 6):
        write_checkpoint(tmp_path, step, keep_last=2, write=_write(step))
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000004", "step-000006"]
    (tmp_path / "checkpoints" / "step-000008.tmp").mkdir()  # a writer killed mid-way
    assert checkpoint_dirs(tmp_path)[-1].name == "step-000006", "a staging dir is never a checkpoint"


def test_running_out_of_disk_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, 2, keep_last=1, write=_write(2))
    good = checkpoint_dirs(tmp_path)[-1]
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def disk_full(filename, data):
        with open(filename, "wb") as f:  # some bytes land, then the disk is full
            f.write(data[:64])
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(ckpt, "write_hashed", disk_full)  # what save_tree writes through
    with pytest.raises(CheckpointError) as failure:
        write_checkpoint(tmp_path, 4, keep_last=1, write=_write(4))
    monkeypatch.undo()
    message = str(failure.value)
    assert "No space left on device" in message and str(good) in message and "--resume" in message
    assert checkpoint_dirs(tmp_path) == [good]
    assert not list((tmp_path / "checkpoints").glob("*.tmp")), "the partial checkpoint must be removed"
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert load_tree(good / "state.safetensors")["w"].tolist() == [2.0] * 4


def test_no_module_uses_torch_load_without_weights_only():
    import pathlib
    import re

    root = pathlib.Path(ckpt.__file__).parents[2]  # the project: rlhf_dist/checkpoints/files.py
    offenders = []
    assert len({p.parent for p in root.glob("rlhf_dist/**/*.py")}) > 5  # the project's tree, not one package
    for path in [*root.glob("rlhf_dist/**/*.py"), *root.glob("actors/**/*.py"), *root.glob("launch/**/*.py")]:
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            if "weights_only=True" not in call:
                offenders.append(f"{path.name}: {call}")
    assert not offenders


# -- manifests ------------------------------------------------------------------------------------


def _manifest(ckpt_dir):
    return {f["path"]: f for f in json.loads((ckpt_dir / "manifest.json").read_text())["files"]}


def test_every_checkpoint_file_is_in_its_manifest_with_its_size_and_sha256(tmp_path):
    import hashlib

    done = write_checkpoint(tmp_path, 2, keep_last=1, write=_write(2))
    files = _manifest(done)
    on_disk = sorted(p.relative_to(done).as_posix() for p in done.rglob("*") if p.is_file())
    assert sorted(files) == [p for p in on_disk if p != "manifest.json"] == ["driver_state.json", "state.safetensors"]
    for rel, entry in files.items():
        data = (done / rel).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    verify_checkpoint(done, full=True)  # the round trip: what was written checks out


def test_writers_hash_while_writing_and_only_other_files_are_read_back(tmp_path, monkeypatch):
    """The safe DeepSpeed engine records the digests of what it saved; the driver hands its own in;
    the manifest re-reads only files written by neither (here: DeepSpeed's `latest`)."""
    import rlhf_dist.checkpoints.manifest as manifest

    read_back = []
    real_hash_file = manifest.hash_file
    monkeypatch.setattr(manifest, "hash_file", lambda p: read_back.append(p.name) or real_hash_file(p))

    def write(tmp):
        engine = ckpt.safe_checkpoint_engine()  # what a learner rank saves through
        (tmp / "policy" / "state").mkdir(parents=True)
        engine.create(None)
        engine.save({"module": {"w": torch.ones(3)}}, str(tmp / "policy" / "state" / "mp_rank_00_model_states.pt"))
        engine.save({"optimizer": {"step": 3}}, str(tmp / "policy" / "state" / "zero_pp_rank_0_optim_states.pt"))
        engine.commit(None)
        (tmp / "policy" / "latest").write_text("state")  # DeepSpeed writes this one itself
        return [write_json(tmp / "driver_state.json", {"steps_done": 2})]

    done = write_checkpoint(tmp_path, 2, keep_last=1, write=write)
    assert read_back == ["latest"]
    assert not list(done.rglob(".digests-*")), "the per-writer records are folded into the manifest"
    assert sorted(_manifest(done)) == ["driver_state.json", "policy/latest", "policy/state/mp_rank_00_model_states.pt",
                                       "policy/state/zero_pp_rank_0_optim_states.pt"]
    verify_checkpoint(done, full=True)
    assert load_tree(done / "policy" / "state" / "mp_rank_00_model_states.pt")["module"]["w"].tolist() == [1.0] * 3


def test_a_file_that_changed_between_writing_and_the_manifest_fails_the_checkpoint(tmp_path):
    def write(tmp):
        digest = save_tree({"w": torch.ones(8)}, tmp / "state.safetensors")
        with open(tmp / "state.safetensors", "ab") as f:
            f.write(b"junk")
        return [digest]

    with pytest.raises(CheckpointError, match="state.safetensors is .* bytes on disk, but .* were written"):
        write_checkpoint(tmp_path, 2, keep_last=1, write=write)
    assert checkpoint_dirs(tmp_path) == [] and not list((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("damage, message", [
    ("flip", "state.safetensors does not match its sha256 in the manifest"),
    ("truncate", "state.safetensors is 100 bytes, the manifest says"),
    ("delete", "incomplete: state.safetensors is missing"),
    ("no manifest", "has no manifest.json"),
    ("bad manifest", "manifest.json is damaged"),
])
def test_verification_names_the_damaged_file_and_what_is_wrong(tmp_path, damage, message):
    done = write_checkpoint(tmp_path, 2, keep_last=1, write=_write(2))
    state = done / "state.safetensors"
    if damage == "flip":
        flip_byte(state)
    elif damage == "truncate":
        state.write_bytes(state.read_bytes()[:100])
    elif damage == "delete":
        state.unlink()
    elif damage == "no manifest":
        (done / "manifest.json").unlink()
    else:
        (done / "manifest.json").write_text('{"files": [{"path": ')
    with pytest.raises(CheckpointIntegrityError) as failure:
        verify_checkpoint(done, full=True)
    assert message in str(failure.value) and str(done) in str(failure.value)


def test_large_checkpoints_get_a_size_check_unless_verify_asks_for_hashes(tmp_path, monkeypatch):
    import rlhf_dist.checkpoints.manifest as manifest

    done = write_checkpoint(tmp_path, 2, keep_last=1, write=_write(2))
    flip_byte(done / "state.safetensors")
    verify_checkpoint(done, full=False)  # sizes only: a flipped byte passes
    monkeypatch.setattr(manifest, "FULL_CHECK_BYTES", 10)  # "this checkpoint is over 2 GB"
    verify_checkpoint(done)
    with pytest.raises(CheckpointIntegrityError, match="sha256"):
        verify_checkpoint(done, full=True)  # --verify
    monkeypatch.setattr(manifest, "FULL_CHECK_BYTES", 10**9)
    with pytest.raises(CheckpointIntegrityError, match="sha256"):
        verify_checkpoint(done)  # under the limit: hashed by default


def flip_byte(path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
