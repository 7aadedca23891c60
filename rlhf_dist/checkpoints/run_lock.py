"""One run per run directory: an OS lock on ``RUN_DIR/.rlhf-dist-lock``, held while the run lives.

The lock is ``flock`` on an open file, so the kernel drops it when its holder exits in any way,
SIGKILL included: a killed run never leaves a stale lock behind, and the file that stays (with the
last holder's PID, host and command, for the message) means nothing by itself. A second run that
targets a locked directory is refused before it writes anything, naming the holder.

A process holds each directory once (taking it again is a no-op), so the demo's stages and a
resume inside one process do not refuse themselves; :func:`release_run_dir` lets an in-process
caller (a test, a library user) hand the directory on before it exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TypeVar

from rlhf_dist.errors import UserError

LOCK_FILE = ".rlhf-dist-lock"
_HELD: dict[Path, int] = {}  # resolved run dir -> open file descriptor holding its lock


class RunDirInUse(UserError):
    """Another live run holds the run directory."""


def holder_of(run_dir: Path) -> dict | None:
    """Who holds ``run_dir``'s lock now (pid, host, command, started), or None when nobody does."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file() or Path(run_dir).resolve() in _HELD:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def lock_run_dir(run_dir: Path, what: str = "--run-dir") -> None:
    """Take ``run_dir``'s lock for this process (the directory must exist), or raise
    :class:`RunDirInUse` naming the PID and host of the run that holds it."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return
    path = key / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirInUse(in_use_message(run_dir, _read_holder(path), what)) from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _HELD[key] = fd


def release_run_dir(run_dir: Path) -> None:
    """Let go of ``run_dir``'s lock, if this process holds it (the file stays)."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


@contextmanager
def releasing_run_dirs() -> Iterator[None]:
    """Release, on the way out, every run-dir lock taken inside the block."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in set(_HELD) - before:
            release_run_dir(key)


F = TypeVar("F", bound=Callable)


def releases_run_dirs(fn: F) -> F:
    """``fn`` hands on every run dir it locked when it returns or raises (an in-process run)."""

    @wraps(fn)
    def call(*args, **kwargs):
        with releasing_run_dirs():
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


def refuse_if_in_use(run_dir: Path, what: str = "--run-dir") -> None:
    """Raise :class:`RunDirInUse` when another process holds ``run_dir``; writes nothing."""
    holder = holder_of(run_dir)
    if holder is not None:
        raise RunDirInUse(in_use_message(run_dir, holder, what))


def in_use_message(run_dir: Path, holder: dict, what: str) -> str:
    who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("command"):
        who += f", started {holder.get('started', '?')} as `{holder['command']}`"
    return (f"{what} {str(run_dir)!r} is in use by another rlhf-dist run ({who}); nothing was written. "
            "Wait for it to end or stop it, or pick another run directory")


def _read_holder(path: Path) -> dict:
    """The holder's record; the lock's winner writes it right after locking, so wait a moment for it."""
    for _ in range(20):
        try:
            record = json.loads(path.read_text(encoding="utf-8") or "null")
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict):
            return record
        time.sleep(0.05)
    return {}
