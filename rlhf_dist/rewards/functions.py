"""Python reward functions: ``module:function`` paths, called TRL-style with the row columns.

A function is called ``fn(prompts, responses, **columns)``: the B prompt texts and B responses
positionally, then each dataset column as a keyword argument holding that column's B values.
Only columns whose names are identifiers (and not ``prompts``/``responses``) are passed; a
function without ``**kwargs`` gets only the columns it names, so ``def f(prompts, responses)``
works on any data and ``def f(prompts, responses, answer, **kw)`` sees every column.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rlhf_dist.errors import UserError
from rlhf_dist.rewards.errors import RewardError

Columns = Mapping[str, Sequence[Any]]
"""Dataset columns of a batch: name -> B values, in the order of the prompts."""

BatchFn = Callable[[list[str], list[str], Columns], Any]
"""A batched component: ``(prompts, responses, columns) -> B scores`` (list, array or tensor)."""

_RESERVED = frozenset({"prompts", "responses"})
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


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
    """``fn`` as a batch component: called ``fn(prompts, responses, **columns)`` with the columns
    its signature takes, and every exception re-raised as a :class:`RewardError` naming ``where``."""
    accepted, required, positional = _keyword_parameters(fn, where)

    def score(prompts: list[str], responses: list[str], columns: Columns) -> Any:
        passed = {
            name: list(values)
            for name, values in columns.items()
            if name.isidentifier() and name not in _RESERVED and name not in positional
            and (accepted is None or name in accepted)
        }
        missing = sorted(required - passed.keys())
        if missing:
            raise RewardError(
                f"{where} takes column(s) {missing} without a default, but the batch's columns are "
                f"{sorted(columns) or 'none'}; add them to the data or give those parameters defaults"
            )
        try:
            return fn(prompts, responses, **passed)
        except Exception as exc:
            raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc

    return score


def _keyword_parameters(
    fn: Callable[..., Any], where: str
) -> tuple[frozenset[str] | None, frozenset[str], frozenset[str]]:
    """What ``fn`` takes after (prompts, responses): the column names it accepts (None: all, it has
    ``**kwargs``), those it requires, and the names of its two positional parameters."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: call it with no columns
        return frozenset(), frozenset(), frozenset()
    head = [p for p in params if p.kind in _POSITIONAL][:2]
    if len(head) < 2 and not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        raise UserError(f"{where} must take (prompts, responses, **columns); its signature is {inspect.signature(fn)}")
    rest = [p for p in params if p not in head]
    named = [p for p in rest if p.kind in _BY_KEYWORD]
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
    accepted = None if takes_all else frozenset(p.name for p in named)
    required = frozenset(p.name for p in named if p.default is inspect.Parameter.empty)
    return accepted, required, frozenset(p.name for p in head)
