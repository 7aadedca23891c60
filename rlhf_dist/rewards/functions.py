"""Python reward functions: ``module:function`` paths, bound to their arguments by name.

Two styles of function are taken, ours and TRL's:

- ours, ``fn(prompts, responses, **columns)``: no parameter uses one of the reward argument names
  below; the first two positional parameters get the B prompts and the B responses, whatever their
  names, and each other parameter (or ``**columns``) gets the dataset column of that name.
- by name (TRL's style, e.g. ``def accuracy(completions, answer, **kwargs)``): a parameter named
  ``prompts``, ``completions`` or ``responses`` (both: the B response texts), ``completion_ids`` (the
  B lists of response token ids) or ``trainer_state`` (``.global_step``: the training step) gets
  that value, by position or by keyword; a parameter named after a dataset column gets that column;
  ``**kwargs`` gets the other columns and, as TRL passes them, the reward arguments not named, unless
  the function names ``responses`` (our vocabulary: ``**columns`` then holds only columns).

In either style, a multi-turn run's functions may also name ``transcripts`` (each trajectory's
``{role, content}`` messages) and ``turn_rewards`` (each trajectory's per-turn env rewards); a
single-turn run passes None for both.

Only columns whose names are identifiers are passed, and a column named like a reward argument is
shadowed by it. A required parameter that is neither is refused before the run starts, naming it
and the columns there are (:meth:`Binding.problem`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_dist.errors import UserError
from rlhf_dist.rewards.errors import RewardError

Columns = Mapping[str, Sequence[Any]]
"""Dataset columns of a batch: name -> B values, in the order of the prompts."""

BatchFn = Callable[..., Any]
"""A batched component: ``(prompts, responses, columns, extras=None) -> B scores`` (list, array or
tensor); ``extras`` is an :class:`Extras` (token ids, step) that only Python functions read."""

ARGUMENTS = ("prompts", "completions", "responses", "completion_ids", "trainer_state")
"""The reward arguments a function may name, besides the dataset columns."""
_TRL_EXTRAS = ("prompts", "completions", "completion_ids", "trainer_state")  # what TRL puts in **kwargs
TRAJECTORY_ARGUMENTS = ("transcripts", "turn_rewards")
"""Multi-turn arguments a function of either style may name (never put in ``**kwargs``)."""
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class TrainerState:
    """What a reward sees of the run, as TRL's ``trainer_state`` (only the step, here)."""

    global_step: int


def load_python_function(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function (any callable attribute)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"python reward path must look like 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import module {module_name!r} for reward {spec!r}: {exc}. Make sure it is on "
            "PYTHONPATH (and installed on every node that runs the reward scorer)"
        ) from exc
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"module {module_name!r} ({module.__file__}) has no attribute {attr!r}{hint}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise UserError(f"{spec!r} is a {type(fn).__name__}, not a function; point path at a callable")
    return fn


def with_columns(fn: Callable[..., Any], where: str) -> BatchFn:
    """``fn`` as a batch component, its parameters bound by :class:`Binding`; every exception it
    raises is re-raised as a :class:`RewardError` naming ``where``."""
    binding = Binding.of(fn, where)

    def score(prompts: list[str], responses: list[str], columns: Columns, extras: Extras | None = None) -> Any:
        args, kwargs = binding.arguments(prompts, responses, columns, extras or Extras())
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc

    return score


@dataclass(frozen=True)
class Extras:
    """The reward arguments beyond texts and columns: response token ids, the step, and a multi-turn
    run's transcripts and turn rewards."""

    completion_ids: list[list[int]] | None = None
    step: int = 0
    transcripts: list[list[dict]] | None = None
    turn_rewards: list[list[float]] | None = None

    def part(self, start: int, stop: int) -> Extras:
        """The extras of rows ``start:stop``."""
        cut = (lambda rows: None if rows is None else rows[start:stop])
        return Extras(cut(self.completion_ids), self.step, cut(self.transcripts), cut(self.turn_rewards))


@dataclass(frozen=True)
class Binding:
    """How one function's parameters get their values (see the module docstring)."""

    where: str
    positional_pair: bool  # ours: the first two positional parameters are (prompts, responses)
    params: tuple[inspect.Parameter, ...]  # every named parameter after that pair
    var_args: bool  # takes *args
    var_kwargs: bool  # takes **kwargs
    trl_kwargs: bool  # **kwargs also gets the reward arguments not named (TRL's style)
    pair_names: frozenset[str] = frozenset()  # ours: the pair's parameter names, which no column fills

    @classmethod
    def of(cls, fn: Callable[..., Any], where: str) -> Binding:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature: called (prompts, responses)
            return cls(where, True, (), True, False, False)
        var_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
        var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        named = [p for p in params if p.kind in _POSITIONAL or p.kind is inspect.Parameter.KEYWORD_ONLY]
        by_name = any(p.name in ARGUMENTS for p in named) or (var_kwargs and not var_args and not named)
        if by_name:
            trl = not any(p.name == "responses" for p in named)
            return cls(where, False, tuple(named), var_args, var_kwargs, trl)
        head = [p for p in named if p.kind in _POSITIONAL][:2]
        if len(head) < 2 and not var_args:
            raise UserError(
                f"{where} must take (prompts, responses, **columns), or name its arguments as TRL does "
                f"(e.g. completions, **kwargs); its signature is {inspect.signature(fn)}"
            )
        rest = tuple(p for p in named if p not in head)
        return cls(where, True, rest, var_args, var_kwargs, False, frozenset(p.name for p in head))

    def problem(self, columns: Sequence[str], data: str = "the data") -> str | None:
        """Why the function cannot be called on rows with ``columns`` (None: it can)."""
        unbound = [p.name for p in self._required() if p.name not in self._columns_passed(columns)]
        if not unbound:
            return None
        names = ", ".join(repr(n) for n in unbound)
        have = ", ".join(sorted(c for c in columns if c.isidentifier())) or "none"
        return (
            f"{self.where} takes {names}, which is neither a reward argument ({', '.join(ARGUMENTS)}) nor a "
            f"column of {data} (columns: {have}); rename the parameter, add the column, or give it a default"
        )

    def arguments(
        self, prompts: list[str], responses: list[str], columns: Columns, extras: Extras
    ) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments of one call."""
        problem = self.problem(list(columns), "this batch")
        if problem:
            raise RewardError(problem)
        passed = {name: list(values) for name, values in columns.items() if name in self._columns_passed(columns)}
        trajectory = {"transcripts": extras.transcripts, "turn_rewards": extras.turn_rewards}
        passed.update({name: trajectory[name] for name in TRAJECTORY_ARGUMENTS if name in self._names})
        if self.positional_pair:
            return [prompts, responses], passed
        values = {
            "prompts": prompts, "completions": responses, "responses": responses,
            "completion_ids": extras.completion_ids, "trainer_state": TrainerState(extras.step),
        }
        args, kwargs = [], {}
        for p in self.params:
            if p.name in ARGUMENTS or p.name in passed:
                value = values[p.name] if p.name in ARGUMENTS else passed[p.name]
                if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                    args.append(value)
                else:
                    kwargs[p.name] = value
        if self.var_kwargs:
            kwargs.update({k: v for k, v in passed.items() if k not in kwargs})
            if self.trl_kwargs:
                kwargs.update({k: values[k] for k in _TRL_EXTRAS if k not in kwargs and k not in self._names})
        return args, kwargs

    @property
    def _names(self) -> set[str]:
        return {p.name for p in self.params}

    def _required(self) -> list[inspect.Parameter]:
        return [p for p in self.params
                if p.default is inspect.Parameter.empty and p.name not in (*ARGUMENTS, *TRAJECTORY_ARGUMENTS)]

    def _columns_passed(self, columns: Sequence[str]) -> set[str]:
        """The columns this function gets: those it names, or every identifier one with **kwargs;
        never one named like a reward argument (or, ours, like the pair's parameters)."""
        usable = {c for c in columns if c.isidentifier() and c not in (*ARGUMENTS, *TRAJECTORY_ARGUMENTS)
                  and c not in self.pair_names}
        return usable if self.var_kwargs else usable & self._names
