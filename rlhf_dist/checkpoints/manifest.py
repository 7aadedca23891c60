"""Checkpoint integrity: every file's size and sha256 in ``manifest.json``, checked before a resume.

Each writer hashes the bytes it writes as it writes them (`write_hashed`), so nobody reads a large
checkpoint back just to hash it: the learners' DeepSpeed engine leaves one digest record per
process beside its files (`record_digests`), the driver passes its own digests in, and only the
few small files written by others (DeepSpeed's ``latest``, its recovery scripts, the learners' RNG
files) are hashed by reading them when the manifest is assembled, before the rename that marks
the checkpoint complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlhf_dist.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "rlhf-dist-checkpoint-manifest/1"
FULL_CHECK_BYTES = 2 * 10**9  # below this, a resume re-hashes every file; above it only with --verify
_RECORD_PREFIX = ".digests-"  # per-writer digest records, folded into the manifest and removed
_CHUNK = 1 << 22


class CheckpointIntegrityError(UserError):
    """A checkpoint is incomplete or damaged; the message names the file and what is wrong."""


@dataclass(frozen=True)
class FileDigest:
    path: Path  # where the file was written
    size: int  # bytes
    sha256: str  # hex


def write_hashed(path: str | Path, data: bytes) -> FileDigest:
    """Write ``data`` to ``path`` (fsynced), hashing each chunk as it goes out."""
    digest = hashlib.sha256()
    view = memoryview(data)
    with open(path, "wb") as f:
        for start in range(0, len(view), _CHUNK):
            chunk = view[start : start + _CHUNK]
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return FileDigest(Path(path), len(data), digest.hexdigest())


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_digests(digests: Iterable[FileDigest]) -> None:
    """Leave the digests of the files this process wrote beside them, one record per directory,
    for `write_manifest` to collect (a learner rank cannot hand them to the driver directly)."""
    by_dir: dict[Path, dict[str, list]] = {}
    for d in digests:
        by_dir.setdefault(d.path.parent, {})[d.path.name] = [d.size, d.sha256]
    for directory, files in by_dir.items():
        name = f"{_RECORD_PREFIX}{socket.gethostname()}-{os.getpid()}.json"
        (directory / name).write_text(json.dumps(files))


def write_manifest(root: Path, known: Iterable[FileDigest] = ()) -> Path:
    """Write ``root/manifest.json``: every file under ``root`` with its size and sha256.

    Digests come from ``known`` and the writers' records; a file with neither is hashed now. A
    file whose size on disk differs from what its writer wrote is an error (the write went wrong).
    """
    recorded = {d.path.resolve().relative_to(root.resolve()).as_posix(): (d.size, d.sha256) for d in known}
    for record in sorted(root.rglob(f"{_RECORD_PREFIX}*.json")):
        for name, (size, sha) in json.loads(record.read_text()).items():
            recorded[(record.parent / name).relative_to(root).as_posix()] = (size, sha)
        record.unlink()
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel, size = path.relative_to(root).as_posix(), path.stat().st_size
        if rel in recorded and recorded[rel][0] != size:
            raise OSError(f"{path} is {size} bytes on disk, but {recorded[rel][0]} were written")
        sha = recorded[rel][1] if rel in recorded else hash_file(path)
        files.append({"path": rel, "size": size, "sha256": sha})
    manifest = {"format": FORMAT, "total_bytes": sum(f["size"] for f in files), "files": files}
    out = root / MANIFEST
    write_hashed(out, json.dumps(manifest, indent=1).encode())
    return out


def verify_checkpoint(ckpt: Path, full: bool | None = None) -> None:
    """Check ``ckpt`` against its manifest: every file present with its size, and (``full``, or by
    default when the checkpoint is under 2 GB) its sha256. Raises `CheckpointIntegrityError`
    naming the first file that is missing, cut short or changed."""
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointIntegrityError(
            f"checkpoint {ckpt} has no {MANIFEST}: it is incomplete, or was written by an rlhf-dist "
            "without checkpoint manifests, so its files cannot be checked"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        entries = [(e["path"], int(e["size"]), str(e["sha256"])) for e in manifest["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointIntegrityError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    for rel, size, _ in entries:
        file = ckpt / rel
        if not file.is_file():
            raise CheckpointIntegrityError(f"checkpoint {ckpt} is incomplete: {rel} is missing")
        if (actual := file.stat().st_size) != size:
            raise CheckpointIntegrityError(
                f"checkpoint {ckpt} is damaged: {rel} is {actual} bytes, the manifest says {size} "
                "(cut short or changed after it was written)"
            )
    if full is None:
        full = sum(size for _, size, _ in entries) < FULL_CHECK_BYTES
    if full:
        for rel, _, sha in entries:
            if hash_file(ckpt / rel) != sha:
                raise CheckpointIntegrityError(
                    f"checkpoint {ckpt} is damaged: {rel} does not match its sha256 in the manifest "
                    "(its bytes changed after it was written)"
                )
