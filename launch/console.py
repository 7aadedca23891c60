"""The terminal in our voice: phase lines, our warnings and one line when a signal stops a command;
what Ray, vLLM, DeepSpeed, transformers and torch print goes to ``RUN_DIR/logs/`` instead.

What reaches the terminal (unless ``--verbose``):
- one line per startup phase with its time (`phase`): ``starting Ray (5.1 s)``;
- the step lines or the progress bar, eval and checkpoint notes, the summary (`rlhf_dist.metrics.logger`);
- our warnings, as ``rlhf-dist: warning: ...``, from this process and from the actors;
- a third-party record at WARNING or above that is not known noise (`actors.log_relay.KNOWN_NOISE`),
  once, as ``rlhf-dist: warning: <library> in <process>: <its first line>``.

Where the rest goes, inside `logs_to(run_dir)`:
- ``logs/driver.log``: this process's library logging (records logged before the run directory
  existed are kept in memory and written there first);
- ``logs/<actor>.log``: each actor's whole stdout and stderr (`actor_runtime_env`, `actors.shell`);
- ``logs/warnings.jsonl``: the warnings the actors pass up, which a thread here prints once each.

``--verbose`` (`begin`) turns all of this off: every library prints to the terminal as it would.
Signals (`begin` installs the handlers): SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main
thread (Ray's ``ray.get`` re-raises only that type), and `exit_code` says which one came (130, 143);
inside `on_sigterm(callback)` the first SIGTERM only calls ``callback`` (finish the step, stop).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from actors.log_relay import LOG_FILE_ENV, RELAY_FILE_ENV, WarningRelay, is_ours

PREFIX = "rlhf-dist"
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_BUFFER_LINES = 10_000  # records kept in memory before the run directory exists


class RunStopped(Exception):
    """A command stopped on SIGINT or SIGTERM and cleaned up; ``str()`` is the one line for the user."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# -- lines on the terminal ------------------------------------------------------------------------


def say(line: str, err: bool = False) -> None:
    """Print one line of ours, above a progress bar if one is showing."""
    stream = sys.stderr if err else sys.stdout
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
        tqdm.tqdm.write(line, file=stream)
    else:
        stream.write(line + "\n")
        stream.flush()


def warn(text: str) -> None:
    """``rlhf-dist: warning: text`` on stderr, once per text."""
    if text not in _state.warned:
        _state.warned.add(text)
        say(f"{PREFIX}: warning: {text}", err=True)


def seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def done(text: str, took: float) -> None:
    """A phase line: ``text (5.1 s)``."""
    say(f"{text} ({seconds(took)})")


@contextlib.contextmanager
def phase(text: str) -> Iterator[None]:
    """Time a startup phase and print ``text (N s)`` when it ends (nothing if it raised)."""
    started = time.perf_counter()
    yield
    done(text, time.perf_counter() - started)


def since_begin() -> float | None:
    """Seconds since the command started (`begin`) or since the last run in it ended (the demo's
    stages), or None outside the CLI."""
    return None if _state.began is None else time.perf_counter() - _state.began


def outputs_line(run_dir: Path, notes: dict[str, str] | None = None) -> str:
    """``outputs: DIR/ (config.yaml, metrics.jsonl, checkpoints/, logs/ = ..., ...)``: every entry
    the run directory holds (hidden ones aside), files first, with a note on some."""
    notes = {"logs/": "Ray, vLLM, DeepSpeed and transformers logs", **(notes or {})}
    entries = sorted((p for p in Path(run_dir).iterdir() if not p.name.startswith(".")),
                     key=lambda p: (p.is_dir(), p.name))
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    shown = [f"{n} = {notes[n]}" if n in notes else n for n in names]
    return f"outputs: {run_dir}/ ({', '.join(shown)})"


# -- where library output goes --------------------------------------------------------------------


class _Router:
    """This process's third-party logging into one file (a memory buffer until there is one); our
    loggers' warnings to the terminal; third-party warnings that matter to the terminal once."""

    def __init__(self) -> None:
        self.buffer: list[str] = []
        self.target: IO[str] | None = None
        self.file_handler = _TargetHandler(self)
        self.file_handler.setFormatter(logging.Formatter(_FORMAT))
        self.console_handler = _OurWarnings()
        self.relay = WarningRelay(self.show, include_ours=False, on_record=self.tame, write_warning=self.write)
        self.stripped: list[tuple[logging.Logger, logging.Handler]] = []
        self.propagate: dict[logging.Logger, bool] = {}
        self.root_level = logging.root.level

    def install(self) -> None:
        logging.root.addHandler(self.file_handler)
        self.root_level = logging.root.level
        logging.root.setLevel(logging.INFO)
        for name in ("rlhf_dist", "launch", "actors"):
            logging.getLogger(name).addHandler(self.console_handler)
        self.relay.install()
        for name in list(logging.root.manager.loggerDict):
            self.tame(name)

    def uninstall(self) -> None:
        self.relay.uninstall()
        for name in ("rlhf_dist", "launch", "actors"):
            logging.getLogger(name).removeHandler(self.console_handler)
        logging.root.removeHandler(self.file_handler)
        logging.root.setLevel(self.root_level)
        for logger, handler in self.stripped:
            logger.addHandler(handler)
        for logger, propagate in self.propagate.items():
            logger.propagate = propagate
        self.stripped, self.propagate = [], {}

    def tame(self, name: str) -> None:
        """Send a library logger and its parents to our file: drop their terminal handlers and let
        records propagate to the root (run for every record, so loggers made later are caught)."""
        if is_ours(name):
            return
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            logger = logging.root.manager.loggerDict.get(".".join(parts[:i]))
            if not isinstance(logger, logging.Logger):
                continue
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    logger.removeHandler(handler)
                    self.stripped.append((logger, handler))
            if not logger.propagate:
                self.propagate.setdefault(logger, False)
                logger.propagate = True

    def write(self, text: str) -> None:
        if self.target is not None:
            self.target.write(text.rstrip("\n") + "\n")
            self.target.flush()
        elif len(self.buffer) < _BUFFER_LINES:
            self.buffer.append(text.rstrip("\n"))

    def attach(self, target: IO[str] | None) -> None:
        self.target = target
        if target is not None and self.buffer:
            target.write("\n".join(self.buffer) + "\n")
            target.flush()
            self.buffer = []

    @staticmethod
    def show(item: dict) -> None:
        """A warning passed up by the relay (here or in an actor): ours as it is, a library's with its
        source and the first process that sent it; each once per run, however many processes send it."""
        key = (item.get("source"), item.get("message"))
        if item.get("noise") or key in _state.relayed:
            return
        _state.relayed.add(key)
        where = f" in {item['process']}" if item.get("process") else ""
        if item.get("ours"):
            warn(item["message"] + (f" ({item['process']})" if where else ""))
        else:
            warn(f"{item['source']}{where}: {item['message']}")


class _TargetHandler(logging.Handler):
    def __init__(self, router: _Router):
        super().__init__()
        self.router = router

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.router.write(self.format(record))
        except Exception:
            self.handleError(record)


class _OurWarnings(logging.Handler):
    """Our loggers' WARNING and ERROR records on the terminal, with our prefix."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        kind = "error" if record.levelno >= logging.ERROR else "warning"
        say(f"{PREFIX}: {kind}: {record.getMessage()}", err=True)


class _RelayReader:
    """Prints the warnings actors append to ``logs/warnings.jsonl``, polling it from a thread."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="warning-relay", daemon=True)

    def __enter__(self) -> _RelayReader:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.poll()

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                _Router.show(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue


# -- the state of this process --------------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.verbose = False
        self.began: float | None = None
        self.router: _Router | None = None
        self.logs_dir: Path | None = None
        self.warned: set[str] = set()
        self.relayed: set[tuple] = set()  # (source, message) of the warnings shown from the relay
        self.signal: int | None = None  # the first SIGINT/SIGTERM received
        self.graceful: Callable[[], None] | None = None


_state = _State()


def begin(verbose: bool = False) -> None:
    """Called once by the CLI before a command runs: start the clock, install the signal handlers,
    and (unless ``verbose``) keep library output off the terminal from here on."""
    _state.verbose, _state.began = verbose, time.perf_counter()
    install_signal_handlers()
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Writing model shards" bars
    _state.router = _Router()
    _state.router.install()


def end() -> None:
    """Undo `begin` (the CLI's last step; matters when ``main`` runs inside another program, e.g. tests)."""
    if _state.router is not None:
        _state.router.uninstall()
    if _state.began is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _state.__init__()


def routing() -> bool:
    """True inside `logs_to` without --verbose: actors get log files, Ray does not forward their output."""
    return _state.logs_dir is not None


@contextlib.contextmanager
def logs_to(run_dir: Path) -> Iterator[Path | None]:
    """Library output of this process and of the actors started inside goes to ``run_dir/logs/``.

    Outside the CLI (tests, a library caller) this installs the routing and removes it on exit.
    Nested calls (the demo's stages) each use their own run directory while they run.
    """
    if _state.verbose:
        yield None
        return
    own = _state.router is None
    if own:
        _state.router = _Router()
        _state.router.install()
    router = _state.router
    logs = Path(run_dir) / "logs"
    outer, outer_target = _state.logs_dir, router.target
    try:
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "driver.log", "a", encoding="utf-8") as target, _RelayReader(logs / "warnings.jsonl"):
            router.attach(target)
            _state.logs_dir = logs
            _quiet_progress_bars()
            try:
                yield logs
            finally:
                _state.logs_dir = outer
                router.attach(outer_target)
                if _state.began is not None:
                    _state.began = time.perf_counter()  # the next run's preparation starts now
    finally:
        if own:
            router.uninstall()
            _state.router = None


def _quiet_progress_bars() -> None:
    """transformers read HF_HUB_DISABLE_PROGRESS_BARS at import; if it came first, say it directly."""
    module = sys.modules.get("transformers.utils.logging")
    if module is not None:
        module.disable_progress_bar()


def actor_runtime_env(name: str) -> dict | None:
    """The ``runtime_env`` option of actor ``name`` inside `logs_to`: its output goes to
    ``logs/<name>.log`` and its warnings up to the console; None outside (Ray's defaults)."""
    if _state.logs_dir is None:
        return None
    return {"env_vars": {
        LOG_FILE_ENV: str(_state.logs_dir / f"{name}.log"),
        RELAY_FILE_ENV: str(_state.logs_dir / "warnings.jsonl"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }}


# -- signals --------------------------------------------------------------------------------------


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM -> `_on_signal`. Again after ``ray.init``, which sets its own for SIGTERM."""
    if threading.current_thread() is threading.main_thread() and _state.began is not None:
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


def _on_signal(signum: int, frame) -> None:
    first = _state.signal is None
    if first:
        _state.signal = signum
    if first and signum == signal.SIGTERM and _state.graceful is not None:
        _state.graceful()  # preemption: the step finishes, a checkpoint is written, the loop stops
        return
    raise KeyboardInterrupt


def exit_code() -> int:
    """130 after SIGINT (or a plain KeyboardInterrupt), 143 after SIGTERM."""
    return EXIT_SIGTERM if _state.signal == signal.SIGTERM else EXIT_SIGINT


@contextlib.contextmanager
def on_sigterm(callback: Callable[[], None]) -> Iterator[None]:
    """Inside, the first SIGTERM calls ``callback`` instead of interrupting (a second one interrupts)."""
    _state.graceful = callback
    try:
        yield
    finally:
        _state.graceful = None
