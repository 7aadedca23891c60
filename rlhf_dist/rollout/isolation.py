"""``isolation: process``: a trajectory's env and tools in a worker process of their own, which can
be killed.

The env is built in the child (``Class(row, **env_args)``, ``seed`` set) and each call crosses a
pipe. A call that passes its timeout kills the child (a stuck call is gone, not left running in a
thread); a child that dies (``os._exit``, a crash, the memory limit) fails the call. Either way the
env's state is lost, so every later env call of the trajectory fails, and the trajectory is retried
with a fresh env in a fresh process. Plain tools (not the env's) get a fresh process after a kill.

The child's address space is capped (``MEMORY_LIMIT_BYTES``), so a runaway env fails alone instead of
taking the rollout worker with it. This is a fence against accidents, not a security boundary: the
child runs the user's code with the worker's permissions, files and network.
"""

from __future__ import annotations

import inspect
import os
import resource
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Connection, Pipe
from typing import Any

from rlhf_dist.envs.api import as_step, class_tools, finish
from rlhf_dist.envs.tools import Tool
from rlhf_dist.rewards.functions import load_python_function

MEMORY_LIMIT_BYTES = 8 << 30  # the child's address space (RLIMIT_AS)


class ChildDied(RuntimeError):
    """The env's process ended (or was killed) before it answered."""


def _serve(conn: Any) -> None:
    """The child's loop: build the env, then answer calls until the pipe closes."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ValueError, OSError):  # a hard limit already lower: keep it
        pass
    env, tools = None, {}
    while True:
        try:
            op, args = conn.recv()
        except EOFError:
            return
        try:
            if op == "make":  # a new trajectory's env (None: tools only, or back to the idle pool)
                cls_path, row, env_args, seed = args
                env = None
                if cls_path is not None:
                    env = load_python_function(cls_path)(row, **env_args)
                    env.seed = seed
                value = None
            elif op == "method":
                name, call_args = args
                method = getattr(env, name, None)
                value = finish(method(*call_args)) if callable(method) or name != "close" else None
                if not callable(method) and name != "close":
                    raise AttributeError(f"the env has no {name} method")
                if name == "step":
                    value = as_step(value, f"{type(env).__name__}.step")
            else:  # "tool": a plain tool function by module path, or an env tool by method name
                where, arguments = args
                if ":" in where:
                    fn = tools.setdefault(where, load_python_function(where))
                else:
                    fn = getattr(env, where)
                value = fn(**arguments)
            conn.send(("ok", value))
        except BaseException as exc:  # answered to the parent, which decides what it means
            conn.send(("error", (type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)[-4:]))))


class RemoteError(Exception):
    """An exception raised in the env's process, with its type name and traceback text."""

    def __init__(self, kind: str, message: str, trace: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.trace = kind, message, trace


_IDLE: list[tuple[Connection, subprocess.Popen]] = []  # healthy children between trajectories
_IDLE_LOCK = threading.Lock()
MAX_IDLE = 64


class EnvProcess:
    """One trajectory's child process: calls with a timeout, killed past it or replaced after a death.
    Children are reused: a trajectory that ends with its child healthy hands it back (`release`)."""

    def __init__(self, make: tuple):
        self._make, self._lock = make, threading.Lock()
        self._start()

    def _start(self) -> None:
        with _IDLE_LOCK:
            idle = _IDLE.pop() if _IDLE else None
        if idle is not None and idle[1].poll() is None:
            self._conn, self._proc = idle
        else:
            # A new interpreter (never a fork of a process holding an engine's threads), with this
            # process's import path, so the user's env module imports there as it does here.
            self._conn, child = Pipe()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
            self._proc = subprocess.Popen([sys.executable, "-m", "rlhf_dist.rollout.isolation", str(child.fileno())],
                                          pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL)
            child.close()
        self.lost = False  # the env's state is gone (killed or died): env calls fail from now on
        self._call("make", self._make, timeout_s=120.0)

    def release(self) -> None:
        """The trajectory is over: a healthy child drops its env and waits for the next one; any
        other is killed."""
        with self._lock:
            if not self.lost:
                try:
                    self._call("make", (None, {}, {}, 0), timeout_s=10.0)
                except Exception:  # noqa: BLE001 - a child that cannot drop its env is not reused
                    self.kill()
            with _IDLE_LOCK:
                if not self.lost and len(_IDLE) < MAX_IDLE:
                    _IDLE.append((self._conn, self._proc))
                    self.lost, self._proc = True, None  # this handle no longer owns the child
                    return
            self.kill()

    def call(self, op: str, args: tuple, timeout_s: float, env_call: bool) -> Any:
        """``op`` in the child; an env call after a kill or death fails (its env is gone), a plain
        tool call gets a fresh process."""
        with self._lock:
            if self.lost:
                if env_call:
                    raise ChildDied("the env's process was killed or died earlier in this trajectory")
                self._start()
            return self._call(op, args, timeout_s)

    def _call(self, op: str, args: tuple, timeout_s: float) -> Any:
        try:
            self._conn.send((op, args))
            if not self._conn.poll(timeout_s):
                self.kill()
                raise TimeoutError(f"{op} took more than {timeout_s:g} s; its process was killed")
            status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            self.kill()
            raise ChildDied(f"the env's process died (exit code {self._proc.poll()}) during {op}") from exc
        if status == "error":
            raise RemoteError(*value)
        return value

    def kill(self) -> None:
        self.lost = True
        if self._proc is None:  # handed back to the idle pool
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=5)
        self._conn.close()


class IsolatedEnv:
    """The env of one trajectory, in its own process: ``reset``/``step``/``close`` as the env's own."""

    def __init__(self, cls_path: str | None, row: dict, env_args: dict, seed: int, timeout_s: float):
        self.process = EnvProcess((cls_path, row, env_args, seed))
        self.cls_name = (cls_path or "tools").rpartition(":")[2]
        self.timeout_s = timeout_s

    def _method(self, name: str, *args: Any) -> Any:
        return self.process.call("method", (name, args), self.timeout_s, env_call=True)

    def reset(self) -> Any:
        return self._method("reset")

    def step(self, reply: str) -> Any:
        return self._method("step", reply)

    def close(self) -> None:
        self._method("close")


def isolated_tools(process: EnvProcess, tool_paths: list[str], env_cls: type | None, tools: list[Tool],
                   timeout_s: float) -> list[Tool]:
    """``tools`` (schemas as loaded here) whose calls run in ``process``: plain tools by module path,
    the env's tools by method name."""
    paths = dict(zip([t.name for t in tools], tool_paths))
    methods = {t.name: t.name for t in class_tools(env_cls)} if env_cls is not None else {}
    out = []
    for tool in [*tools, *(class_tools(env_cls) if env_cls is not None else [])]:
        where = paths.get(tool.name) or methods[tool.name]
        env_call = tool.name in methods

        def fn(_where=where, _env=env_call, **arguments):
            return process.call("tool", (_where, arguments), timeout_s, env_call=_env)

        fn.__signature__ = inspect.signature(tool.fn)  # Tool.call checks the arguments against it
        out.append(Tool(tool.name, fn, tool.schema))
    return out


if __name__ == "__main__":  # the child: python -m rlhf_dist.rollout.isolation FD
    _serve(Connection(int(sys.argv[1])))
