"""`Step`, the `tool` decorator, and reading an env class and its answers."""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from rlhf_dist.envs.tools import Tool
from rlhf_dist.errors import UserError
from rlhf_dist.rewards.functions import load_python_function

_TOOL_MARK = "__rlhf_dist_tool__"


@dataclass
class Step:
    """What an env answers to one model turn: an observation that follows it (a user message when a
    ``str``, or a list of messages), the turn's reward, whether the trajectory is done, and anything
    worth logging."""

    observation: str | list[dict] | None = None
    reward: float = 0.0
    done: bool = False
    info: dict = field(default_factory=dict)


def tool(method: Callable) -> Callable:
    """Mark an env method as a tool of that env: its type hints and docstring make its schema, and
    each trajectory's calls go to that trajectory's env."""
    setattr(method, _TOOL_MARK, True)
    return method


def as_step(answer: Any, where: str) -> Step:
    """An env's ``step()`` answer as a :class:`Step`: a Step, or a dict with (some of) its keys."""
    if isinstance(answer, Step):
        step = answer
    elif isinstance(answer, dict):
        unknown = sorted(set(answer) - {f.name for f in fields(Step)})
        if unknown:
            raise TypeError(f"{where} returned a dict with unknown keys {unknown}; a Step has observation, "
                            "reward, done, info")
        step = Step(**answer)
    else:
        raise TypeError(f"{where} returned {type(answer).__name__}; return a rlhf_dist.envs.Step or a dict "
                        "with its keys (observation, reward, done, info)")
    if step.observation is not None and not isinstance(step.observation, (str, list)):
        raise TypeError(f"{where}: observation is a {type(step.observation).__name__}; give a str, a list of "
                        "messages, or None")
    if isinstance(step.reward, bool) or not isinstance(step.reward, (int, float)):
        raise TypeError(f"{where}: reward is {step.reward!r}; give a number")
    return Step(step.observation, float(step.reward), bool(step.done), dict(step.info or {}))


def load_env_class(spec: str) -> type:
    """The env class of ``module:Class``; it must be a class with ``reset`` and ``step``."""
    cls = load_python_function(spec)  # refuses a module or name that is not there, or not callable
    if not inspect.isclass(cls):
        raise UserError(f"rollout.multi_turn.env={spec!r} is a {type(cls).__name__}, not a class")
    missing = [name for name in ("reset", "step") if not callable(getattr(cls, name, None))]
    if missing:
        raise UserError(f"rollout.multi_turn.env={spec!r} has no {' or '.join(missing)} method; an env defines "
                        "reset(self) and step(self, reply)")
    return cls


def env_tools(env: Any) -> list[Tool]:
    """The tools an env instance offers: its methods marked with :func:`tool`, bound to it."""
    found = []
    for name in dir(type(env)):
        member = getattr(type(env), name, None)
        if callable(member) and getattr(member, _TOOL_MARK, False):
            found.append(Tool.from_function(getattr(env, name), f"{type(env).__name__}.{name}"))
    return found


def class_tools(cls: type) -> list[Tool]:
    """The tools an env class offers, for their schemas before any env exists: each marked method bound
    to a stand-in object, so that ``self`` is not a parameter. Calls go to each trajectory's env
    (:func:`env_tools`)."""
    stand_in = object()
    found = []
    for name in dir(cls):
        member = getattr(cls, name, None)
        if callable(member) and getattr(member, _TOOL_MARK, False):
            found.append(Tool.from_function(types.MethodType(member, stand_in), f"{cls.__name__}.{name}"))
    return found


def finish(value: Any) -> Any:
    """The value of a call that may have been ``async def``: awaited here when it is a coroutine."""
    if inspect.isawaitable(value):
        return asyncio.run(_awaited(value))
    return value


async def _awaited(value: Any) -> Any:
    return await value
