"""A damaged checkpoint met the way a user meets it: a real run writes checkpoints with manifests
(the learners' DeepSpeed files hashed as they are written), one byte of the latest goes bad, a plain
--resume is refused with the command that uses the previous good one, and that command continues
the run while the damaged checkpoint is kept under checkpoints/abandoned-*."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from rlhf_dist.checkpoints.manifest import verify_checkpoint
from rlhf_dist.checkpoints.run_dir import checkpoint_dirs
from rlhf_dist.metrics.logger import read_metrics

ROOT = Path(__file__).parents[2]


def rlhf_dist(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    return out


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_corrupt_checkpoint_is_refused_and_from_continues_from_the_previous_good_one(tmp_path):
    run_dir = tmp_path / "run"
    out = rlhf_dist("train", "steps=4", "checkpoint.every=2", "rollout.engine=hf", "logging.tensorboard=false",
                    "checkpoint.save_final=false",
                    "--run-dir", str(run_dir), "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [c.name for c in checkpoint_dirs(run_dir)] == ["step-000002", "step-000004"]
    for ckpt in checkpoint_dirs(run_dir):
        listed = {f["path"] for f in json.loads((ckpt / "manifest.json").read_text())["files"]}
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {"manifest.json"}
        assert listed == on_disk and "policy/state/mp_rank_00_model_states.pt" in listed
        verify_checkpoint(ckpt, full=True)

    damaged = run_dir / "checkpoints" / "step-000004" / "policy" / "state" / "mp_rank_00_model_states.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    before = snapshot(run_dir)
    out = rlhf_dist("train", "--resume", str(run_dir))
    assert out.returncode == 2
    assert "step-000004 is damaged: policy/state/mp_rank_00_model_states.pt does not match its sha256" in out.stderr
    command = f"rlhf-dist train --resume {run_dir} --from step-000002"
    assert f"The previous good checkpoint is step-000002; continue from it with: {command}" in out.stderr
    assert snapshot(run_dir) == before

    out = rlhf_dist(*command.split()[1:], "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    (abandoned,) = (run_dir / "checkpoints").glob("abandoned-*")
    assert (abandoned / "step-000004" / "policy" / "state" / "mp_rank_00_model_states.pt").read_bytes() == bytes(data)
    assert [c.name for c in checkpoint_dirs(run_dir)] == ["step-000002", "step-000004"]  # the new line's
    verify_checkpoint(run_dir / "checkpoints" / "step-000004", full=True)
    lines = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == [0, 1, 2, 3, 2, 3], "the resumed steps are appended; the later line of a step wins"
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [0, 1, 2, 3]
