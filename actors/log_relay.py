"""An actor's output in a log file of the run (`route_output_to_log`), with the warnings that matter
passed up to the driver's console (`WarningRelay`, also used by the driver itself: launch/console.py);
known noise stays in the logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Set per actor by launch/console.py `actor_runtime_env`: the actor's log file, and the file of
# warnings the driver's console shows (one JSON object per line).
LOG_FILE_ENV = "RLHF_DIST_LOG_FILE"


RELAY_FILE_ENV = "RLHF_DIST_RELAY_FILE"


OUR_PACKAGES = ("rlhf_dist", "launch", "actors")


# Third-party warnings that are expected in this stack and ask nothing of the user: they stay in the
# logs. Each entry is a piece of the message.
KNOWN_NOISE = (
    # vLLM's in-place reload (our weight sync) finds no checkpoint tensor for RotaryEmbedding's
    # cos_sin_cache, a buffer computed from the rope config that no checkpoint holds, and puts the
    # original back: nothing is lost, and the probe after every sync checks the loaded weights.
    "RotaryEmbedding: Failed to load weights",
    "Token authentication is enabled for this Ray cluster",  # a local Ray instance, ours alone
    "You are using ZeRO with an untested optimizer",  # torch AdamW, chosen on purpose (STACK-NOTES)
    "Setting accelerator to CPU",  # DeepSpeed on a machine without GPU
    # vLLM on CPU: settings we make (eager mode, a seed, one thread) and optional speed-ups.
    "The global random seed is set to",
    "Enforce eager set",
    "Inductor compilation was disabled",
    "Triton is not installed",
    "doesn't include CPU backend",
    "requires Triton",
    "is not found in LD_PRELOAD",
    "doesn't allow to use `torch.set_num_threads`",
    # The threads the placement plan gives the engine (rlhf_dist/planning/threads.py): on-policy it
    # generates alone, so no other process spins beside its OpenMP threads.
    "for serving. Multi-threaded torch CPU ops during serving",
    "sleep mode is not supported",
    # vLLM's CPU build sets its Mamba cache dtype at start-up, for any model: ours have no SSM layers.
    "Reset SSM cache type to float32",
    # Ray at submit: `.venv` is left out of the job's package, as our excludes already ask.
    "is now ignored by default when packaging the working directory",
    # Deprecations inside the libraries' own calls.
    "is deprecated, please use",
    "is deprecated. Please use",
)


def is_ours(name: str) -> bool:
    """Whether a logger or module name belongs to this project."""
    return name.split(".")[0] in OUR_PACKAGES


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


_LOAD_REPORT_ROW = re.compile(r"^(\S+)\s*\|\s*(MISSING|UNEXPECTED|MISMATCH)\s*\|", re.MULTILINE)


def is_noise(message: str) -> bool:
    return any(piece in message for piece in KNOWN_NOISE) or _expected_head_swap(message)


def _expected_head_swap(message: str) -> bool:
    """transformers' LOAD REPORT when a reward model or critic starts from a causal LM: the LM head
    is left out and a new score head initialised, as intended. Any other key in it matters."""
    rows = _LOAD_REPORT_ROW.findall(message) if "LOAD REPORT" in message else []
    return bool(rows) and all(
        (status == "MISSING" and key.startswith("score.")) or (status == "UNEXPECTED" and key.startswith("lm_head."))
        for key, status in rows
    )


def summarize(message: str) -> str:
    """One plain line for the console: the first line, without colour codes; a LOAD REPORT's table
    becomes ``missing a, b; unexpected c``."""
    text = _ANSI.sub("", message).strip()
    line = (text.splitlines() or [""])[0]
    rows = _LOAD_REPORT_ROW.findall(text) if "LOAD REPORT" in text else []
    for status in ("MISSING", "UNEXPECTED", "MISMATCH"):
        keys = [key for key, s in rows if s == status]
        if keys:
            line += f"; {status.lower()} {', '.join(keys[:5])}" + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return line[:300]


class WarningRelay:
    """Passes this process's warnings on, each once: log records at WARNING or above from any logger
    (a record factory sees them whatever the logger's handlers) and Python warnings.

    ``emit`` gets ``{"source", "level", "message", "ours", "noise"}`` (the message's first line).
    ``include_ours``: also our own loggers' records (an actor, where nothing else shows them).
    ``on_record(name)`` sees the logger name of every record (the driver routes that logger).
    ``write_warning(text)`` takes a Python warning's full text (default: stderr, as Python would).
    """

    def __init__(
        self,
        emit: Callable[[dict], None],
        include_ours: bool = True,
        on_record: Callable[[str], None] | None = None,
        write_warning: Callable[[str], None] | None = None,
    ):
        self.emit, self.include_ours = emit, include_ours
        self.on_record, self.write_warning = on_record, write_warning
        self.seen: set[tuple[str, str]] = set()
        self.active = False
        self._busy = threading.local()
        self._factory = self._make_record  # one bound method, to tell later whether it is still installed
        self._showwarning = self._show_warning
        self._previous_factory: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
        self._previous_showwarning = warnings.showwarning

    def install(self) -> None:
        self._previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(self._factory)
        self._previous_showwarning = warnings.showwarning
        warnings.showwarning = self._showwarning
        self.active = True

    def uninstall(self) -> None:
        """Stop relaying; restore the factory and showwarning unless someone wrapped them since."""
        self.active = False
        if logging.getLogRecordFactory() is self._factory:
            logging.setLogRecordFactory(self._previous_factory)
        if warnings.showwarning is self._showwarning:
            warnings.showwarning = self._previous_showwarning

    def _make_record(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._previous_factory(*args, **kwargs)
        if self.active and not getattr(self._busy, "on", False):
            self._busy.on = True
            try:
                if self.on_record is not None:
                    self.on_record(record.name)
                if record.levelno >= logging.WARNING and (self.include_ours or not is_ours(record.name)):
                    self._pass(record.name.split(".")[0], record.levelname, record.getMessage(), is_ours(record.name))
            except Exception:  # a warning that cannot be relayed must not break the caller's logging
                pass
            finally:
                self._busy.on = False
        return record

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if not self.active:
            return self._previous_showwarning(message, category, filename, lineno, file, line)
        text = warnings.formatwarning(message, category, filename, lineno, line)
        if self.write_warning is not None:
            self.write_warning(text)
        else:
            (file or sys.stderr).write(text)
        ours = is_ours(category.__module__)
        source = "rlhf-dist" if ours else _package_of(filename)
        self._pass(source, "WARNING", str(message) if ours else f"{category.__name__}: {message}", ours)

    def _pass(self, source: str, level: str, message: str, ours: bool) -> None:
        first = summarize(message)
        if (source, first) in self.seen:
            return
        self.seen.add((source, first))
        self.emit({"source": source, "level": level, "message": first, "ours": ours,
                   "noise": not ours and is_noise(message)})


def _package_of(filename: str) -> str:
    """``.../site-packages/vllm/x.py`` -> ``vllm``."""
    parts = Path(filename).parts
    if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    return Path(filename).stem


_routed = False


def route_output_to_log() -> None:
    """In an actor whose runtime env names a log file: send the process's stdout and stderr there
    (file descriptors 1 and 2, so C-level writes and child processes too) and pass its warnings up
    to the driver's console through the relay file. Runs before the actor's ``__init__``."""
    global _routed
    path = os.environ.get(LOG_FILE_ENV)
    if not path or _routed:
        return
    _routed = True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    name = Path(path).stem
    print(f"==== {name}: pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    relay_path = os.environ.get(RELAY_FILE_ENV)
    if relay_path:

        def emit(item: dict) -> None:
            if not item["noise"]:
                with open(relay_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**item, "process": name}) + "\n")

        WarningRelay(emit).install()
