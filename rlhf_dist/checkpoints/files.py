"""Checkpoint files: written atomically (temp dir, fsync, rename), never pickled; the run
checkpoint's staging, commit and retention; every process's RNG state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch

from rlhf_dist.checkpoints.manifest import FileDigest, record_digests, write_hashed, write_manifest
from rlhf_dist.checkpoints.run_dir import CHECKPOINTS, checkpoint_dirs
from rlhf_dist.errors import UserError


def publish_dir(tmp: Path, final: Path) -> None:
    """fsync the finished ``tmp`` and rename it to ``final``, replacing an older ``final``: a reader
    sees the old directory, none, or the new one, never half of one."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_TREE_KEY = "rlhf_dist_tree"


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message says what to do."""


def _allowed_classes() -> dict[str, type]:
    """Non-tensor objects DeepSpeed puts in its state dicts, rebuilt by name on load.

    Only these classes are ever instantiated from a checkpoint (the same idea as
    ``torch.load(weights_only=True)``'s allowlist); any other type is refused when saving.
    """
    allowed: dict[str, type] = {}
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum

        for cls in (LossScaler, DynamicLossScaler, ZeroStageEnum):
            allowed[f"{cls.__module__}.{cls.__qualname__}"] = cls
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed[f"{fragment_address.__module__}.{fragment_address.__qualname__}"] = fragment_address
    except ImportError:
        pass
    return allowed


def _encode(obj, tensors: dict[str, torch.Tensor], seen: dict[int, str]):
    import enum

    if isinstance(obj, enum.Enum):
        return {"__enum__": _qualname(type(obj)), "value": _encode(obj.value, tensors, seen)}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        key = seen.get(id(obj))
        if key is None:
            key = seen[id(obj)] = f"t{len(tensors)}"
            tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, torch.Size):
        return {"__size__": list(obj)}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors, seen), _encode(v, tensors, seen)] for k, v in obj.items()]}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {"__object__": _qualname(type(obj)), "fields": [_encode(v, tensors, seen) for v in obj]}
    if isinstance(obj, (list, tuple, set, frozenset)):
        kind = "tuple" if isinstance(obj, tuple) else "set" if isinstance(obj, (set, frozenset)) else "list"
        return {f"__{kind}__": [_encode(v, tensors, seen) for v in obj]}
    name = _qualname(type(obj))
    if name in _allowed_classes() and hasattr(obj, "__dict__"):
        return {"__object__": name, "state": _encode(vars(obj), tensors, seen)}
    raise CheckpointError(f"cannot write a {name} into a checkpoint (only tensors, plain data and {sorted(_allowed_classes())})")


def _decode(obj, tensors: dict[str, torch.Tensor]):

    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    if "__size__" in obj:
        return torch.Size(obj["__size__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__list__" in obj:
        return [_decode(v, tensors) for v in obj["__list__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__set__" in obj:
        return {_decode(v, tensors) for v in obj["__set__"]}
    name = obj.get("__enum__") or obj.get("__object__")
    allowed = _allowed_classes()
    if name not in allowed:
        raise CheckpointError(f"checkpoint names a type {name!r} that rlhf-dist does not load; the file is not ours or is damaged")
    cls = allowed[name]
    if "__enum__" in obj:
        return cls(_decode(obj["value"], tensors))
    if "fields" in obj:
        return cls(*(_decode(v, tensors) for v in obj["fields"]))
    instance = cls.__new__(cls)
    instance.__dict__.update(_decode(obj["state"], tensors))
    return instance


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def save_tree(obj, path: str | Path) -> FileDigest:
    """Write a nest of dicts/lists/tensors/plain values as one safetensors file (tree in its
    metadata); returns its size and sha256, computed from the bytes as they are written."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, {})
    data = save(tensors, metadata={_TREE_KEY: json.dumps(tree)})
    tensors.clear()  # the CPU copies; only the serialized bytes are needed now
    return write_hashed(path, data)


def load_tree(path: str | Path, map_location=None):
    """Read what `save_tree` wrote. Nothing is unpickled: tensors come from safetensors, the rest from JSON."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"{path} is not a readable rlhf-dist checkpoint file ({exc}); use an earlier checkpoint") from None
    if _TREE_KEY not in metadata:
        raise CheckpointError(f"{path} has no rlhf-dist metadata; it was not written by rlhf-dist")
    return _decode(json.loads(metadata[_TREE_KEY]), tensors)


def safe_checkpoint_engine():
    """A DeepSpeed checkpoint engine that writes `save_tree` files instead of pickles, and at the
    commit of a save leaves the digests of what it wrote beside them for the checkpoint manifest."""
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

    class SafeCheckpointEngine(CheckpointEngine):
        def __init__(self):
            super().__init__()
            self.name = "rlhf-dist-safetensors"
            self.written: list[FileDigest] = []

        def create(self, info):
            self.written = []

        def save(self, state_dict, path: str):
            self.written.append(save_tree(state_dict, path))

        def load(self, path: str, map_location=None):
            return load_tree(path, map_location)

        def commit(self, info):
            record_digests(self.written)
            self.written = []
            return True

        def preserves_storage_sharing(self):
            return False

    return SafeCheckpointEngine()


def staging_dir(run_dir: Path, step: int) -> Path:
    """The temp directory a checkpoint of ``step`` (steps done) is written into; emptied first."""
    tmp = Path(run_dir) / CHECKPOINTS / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(tmp: Path, keep_last: int) -> Path:
    """fsync ``tmp``, rename it to its final name, then delete all but the newest ``keep_last``."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    publish_dir(tmp, final)  # replaces a same-step checkpoint when a resumed run re-writes it
    for stale in checkpoint_dirs(final.parent.parent)[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def discard_staging(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint(run_dir: Path, steps_done: int, keep_last: int, write, failures=(OSError,)) -> Path:
    """Stage a checkpoint with ``write(tmp_dir)``, write its manifest, then commit it (fsync +
    rename + prune). ``write`` may return the `FileDigest`s of the files it wrote (hashed as they
    were written); the manifest hashes any other file itself.

    If ``write`` raises one of ``failures`` (a full disk, a dead writer), the staging directory is
    removed and `CheckpointError` says so; the checkpoints already committed are not touched.
    """
    tmp = staging_dir(run_dir, steps_done)
    try:
        write_manifest(tmp, write(tmp) or ())  # before the rename: a complete checkpoint has one
        return commit_checkpoint(tmp, keep_last)
    except failures as exc:
        discard_staging(tmp)
        done = checkpoint_dirs(run_dir)
        kept = f"the last complete checkpoint, {done[-1]}, is intact" if done else "no earlier checkpoint exists"
        raise CheckpointError(
            f"writing the checkpoint after step {steps_done} failed ({exc}); the partial one was removed and "
            f"{kept}. Free disk space (or fix the cause), then continue with: rlhf-dist train --resume {run_dir}"
        ) from exc


def write_json(path: Path, data) -> FileDigest:
    return write_hashed(path, json.dumps(data, indent=1).encode())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """This process's torch, numpy and python RNG states (JSON- and safetensors-friendly)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
        "python": list(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
