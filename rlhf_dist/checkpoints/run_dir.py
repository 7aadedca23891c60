"""Run directories: which ones a run may use, and which checkpoint a resume continues from.

A run directory is ours if it holds `MARKER` (written when a run claims it), or, for runs from
before the marker, our ``config.yaml`` beside our ``metrics.jsonl``; a directory inside one of
ours (the demo's stages: ``DIR/sft``, ``DIR/grpo``) is ours too. A run may start in a new or empty
directory, or in one of ours that holds no completed step (a run that failed before its first
step leaves nothing that blocks a rerun). Anything else is refused and left as it is.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from rlhf_dist.checkpoints.manifest import CheckpointIntegrityError, verify_checkpoint
from rlhf_dist.checkpoints.run_lock import LOCK_FILE, lock_run_dir, refuse_if_in_use, release_run_dir
from rlhf_dist.errors import UserError

MARKER = ".rlhf-dist-run"
CHECKPOINTS = "checkpoints"
_STEP_NAME = re.compile(r"step-(\d+)")


def is_ours(path: Path) -> bool:
    marker = path / MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("tool") == "rlhf-dist"
        except (OSError, ValueError, AttributeError):
            return False
    return (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()


def completed_steps(run_dir: Path) -> int:
    """Rows in ``metrics.jsonl`` (each one is written when its step is done)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    count = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                count += isinstance(json.loads(line), dict)
            except ValueError:  # a partial last line, or not ours: not a step
                pass
    return count


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (``checkpoints/step-N``), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and _STEP_NAME.fullmatch(p.name)]
    return sorted(done, key=lambda p: int(p.name[5:]))


def claim_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (or take over one of ours with no completed step), lock it for this run
    (rlhf_dist/checkpoints/run_lock.py) and mark it as ours.

    Nothing in a refused directory is written to: not one in use by another run, not one holding a
    run's steps, not a non-empty one we did not create.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {str(run_dir)!r} is a file; give a directory (new or empty) for the run's outputs")
    if run_dir.is_dir():
        refuse_if_in_use(run_dir)
    _refuse_used(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)  # two runs racing for a new directory: one wins, the other is refused here
    except OSError as exc:
        raise UserError(f"cannot write to the run directory {str(run_dir)!r}: {exc.strerror}; pick another --run-dir") from None
    try:
        _refuse_used(run_dir)  # a run that ended between the first look and the lock
    except UserError:
        release_run_dir(run_dir)
        raise
    try:
        if not (run_dir / MARKER).exists():
            from importlib.metadata import PackageNotFoundError, version

            try:
                ours = version("rlhf-dist")
            except PackageNotFoundError:
                ours = "unknown"
            marker = {"tool": "rlhf-dist", "version": ours, "command": shlex.join(sys.argv),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (run_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write to the run directory {str(run_dir)!r}: {exc.strerror}; pick another --run-dir") from None
    return run_dir


def _refuse_used(run_dir: Path) -> None:
    """Refuse a directory holding a run's steps or checkpoints, or a non-empty one not ours."""
    contents = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    contents = [name for name in contents if name != LOCK_FILE]
    if not contents:
        return
    # The run itself, or (the demo) a stage run inside it: either is work not to overwrite.
    logged = [(d, completed_steps(d)) for d in (run_dir, *(run_dir / n for n in contents))]
    where, steps = next(((d, n) for d, n in logged if n), (run_dir, 0))
    checkpoints = checkpoint_dirs(run_dir)
    if steps or checkpoints:
        resume = (f"or continue it with: rlhf-dist train --resume {run_dir}" if checkpoints
                  else "it has no checkpoint to resume from")
        raise UserError(
            f"run directory {str(run_dir)!r} already holds a run ({steps} step{'s' * (steps != 1)} in "
            f"{(where / 'metrics.jsonl').relative_to(run_dir)}); pick a new --run-dir, {resume}"
        )
    if not (is_ours(run_dir) or is_ours(run_dir.resolve().parent)):
        shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
        raise UserError(
            f"--run-dir {str(run_dir)!r} is a non-empty directory that rlhf-dist did not create (it holds "
            f"{shown}); nothing in it was changed. Give a new or empty directory, e.g. --run-dir runs/my-run"
        )


# -- which checkpoint a resume continues from -------------------------------------------------------


def resume_checkpoint(run_dir: Path, choice: str | None = None, verify: bool = False) -> Path:
    """The checkpoint ``rlhf-dist train --resume run_dir [--from choice]`` continues from, checked
    against its manifest (every hash with ``verify``, else only under 2 GB).

    ``choice`` is ``step-N`` or a checkpoint directory of this run (default: the latest). A
    damaged checkpoint is an error naming the file and the newest intact checkpoint before it.
    """
    run_dir = Path(run_dir)
    done = checkpoint_dirs(run_dir)
    if not done:
        raise UserError(
            f"--resume {str(run_dir)!r}: no complete checkpoint under {run_dir}/checkpoints (one is written every "
            "checkpoint.every steps); start a new run instead"
        )
    chosen = done[-1] if choice is None else _chosen(run_dir, choice, done)
    try:
        verify_checkpoint(chosen, full=True if verify else None)
    except CheckpointIntegrityError as exc:
        raise CheckpointIntegrityError(f"{exc}.\n{_what_else(run_dir, chosen, done, verify)}") from None
    return chosen


def _what_else(run_dir: Path, damaged: Path, done: list[Path], verify: bool) -> str:
    """The way out of a damaged checkpoint: the newest intact one before it, as a command."""
    older = [c for c in done if int(c.name[5:]) < int(damaged.name[5:])]
    good = next((c for c in reversed(older) if _intact(c, verify)), None)
    if good is not None:
        return (f"The previous good checkpoint is {good.name}; continue from it with: "
                f"rlhf-dist train --resume {run_dir} --from {good.name}")
    newer = [c.name for c in done if int(c.name[5:]) > int(damaged.name[5:])]
    if newer:
        return f"No earlier checkpoint is intact; pick another with --from ({', '.join(newer)}) or start a new run."
    return "No earlier checkpoint is intact; start a new run."


def _chosen(run_dir: Path, choice: str, done: list[Path]) -> Path:
    names = ", ".join(c.name for c in done)
    if match := _STEP_NAME.fullmatch(choice):
        found = [c for c in done if int(c.name[5:]) == int(match.group(1))]
        if not found:
            raise UserError(f"--from {choice}: {run_dir}/checkpoints has no complete checkpoint {choice}; it has {names}")
        return found[0]
    path = Path(choice).expanduser()
    if path.is_dir() and path.resolve().parent == (run_dir / CHECKPOINTS).resolve() and _STEP_NAME.fullmatch(path.name):
        return run_dir / CHECKPOINTS / path.name
    raise UserError(
        f"--from {choice!r} is not a complete checkpoint of {run_dir}; give step-N or one of its "
        f"directories under {run_dir}/checkpoints ({names})"
    )


def _intact(ckpt: Path, verify: bool) -> bool:
    try:
        verify_checkpoint(ckpt, full=True if verify else None)
    except CheckpointIntegrityError:
        return False
    return True


def abandon_newer(run_dir: Path, chosen: Path) -> Path | None:
    """Move the checkpoints newer than ``chosen`` into ``checkpoints/abandoned-<time>/`` (nothing
    is deleted), so that a later plain ``--resume`` continues the line resumed from ``chosen``."""
    newer = [c for c in checkpoint_dirs(run_dir) if int(c.name[5:]) > int(chosen.name[5:])]
    if not newer:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = run_dir / CHECKPOINTS / f"abandoned-{stamp}", 1
    while target.exists():
        n += 1
        target = run_dir / CHECKPOINTS / f"abandoned-{stamp}-{n}"
    target.mkdir()
    for ckpt in newer:
        shutil.move(str(ckpt), str(target / ckpt.name))
    print(f"moved the checkpoints after {chosen.name} ({', '.join(c.name for c in newer)}) to {target}/")
    return target
