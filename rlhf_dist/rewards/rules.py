"""Rules: named per-sample rewards, used in a config as ``{type: rule, name: ..., args: {...}}``.

A rule is a plain function ``fn(prompt, response[, row], *, <params>) -> float``:

- ``prompt``, ``response``: the rendered prompt text and the generated text of one sample;
- ``row`` (optional third positional parameter): that sample's dataset columns, name -> value,
  for rules that check against a label; rules that need none leave it out;
- keyword-only parameters are the rule's settings, given by the component's ``args``. Their
  names, defaults and annotations (str, int, float, bool) are what config validation checks.

Built-in: ``letters`` and ``length`` (the toy task), ``math``, ``exact_match`` and ``format``
(verifiable rewards). Register more with :func:`register_rule`.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlhf_dist.errors import UserError
from rlhf_dist.rewards.errors import RewardError
from rlhf_dist.rewards.math_answer import answers_match, extract_answer, reference_answer

RuleFn = Callable[..., float]
"""``fn(prompt, response[, row], **params) -> score``, see the module docstring."""

SampleRule = Callable[[str, str, Mapping[str, Any]], float]
"""A rule with its args bound: ``(prompt, response, row) -> score``."""

ArgsCheck = Callable[[Mapping[str, Any]], list[str]]
"""Checks a rule's args beyond names and types (e.g. that a regex compiles); returns problems."""

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclass(frozen=True)
class _Registered:
    fn: RuleFn
    check: ArgsCheck | None


_RULES: dict[str, _Registered] = {}


def register_rule(name: str, *, check: ArgsCheck | None = None) -> Callable[[RuleFn], RuleFn]:
    """Decorator that adds a rule to the registry under ``name`` (usable as ``type: rule``).

    ``check`` validates the rule's args before any actor starts, past what the signature says.
    """

    def add(fn: RuleFn) -> RuleFn:
        if name in _RULES and _RULES[name].fn is not fn:
            raise ValueError(f"a reward rule named {name!r} is already registered ({_RULES[name].fn!r})")
        _takes_row(name, fn)  # a function that cannot take (prompt, response) fails here, not mid-run
        _RULES[name] = _Registered(fn, check)
        return fn

    return add


def rule_names() -> list[str]:
    """The registered rule names, sorted."""
    return sorted(_RULES)


def get_rule(name: str) -> RuleFn:
    """The rule function registered as ``name``; an unknown name is a :class:`UserError`."""
    if name not in _RULES:
        raise UserError(_unknown_rule(name))
    return _RULES[name].fn


def rule_problems(name: str, args: Mapping[str, Any]) -> list[str]:
    """What is wrong with rule ``name`` given ``args``: unknown rule, unknown or missing args,
    wrong types, and the rule's own check. Empty when it can run."""
    if name not in _RULES:
        return [_unknown_rule(name)]
    registered = _RULES[name]
    params = _settings(registered.fn)
    problems = []
    for key, value in args.items():
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"reward rule {name!r} has no setting args.{key}; {hint}it takes {_describe(params)}")
        elif (expected := _type_problem(params[key], value)) is not None:
            problems.append(f"reward rule {name!r}: args.{key} must be {expected}, got {value!r}")
    missing = [p for p in params if params[p].default is inspect.Parameter.empty and p not in args]
    if missing:
        problems.append(f"reward rule {name!r} needs args.{missing[0]}; it takes {_describe(params)}")
    if not problems and registered.check is not None:
        problems.extend(registered.check(args))
    return problems


def bind_rule(name: str, args: Mapping[str, Any]) -> SampleRule:
    """Rule ``name`` with ``args`` bound, called ``(prompt, response, row)`` whatever its shape."""
    problems = rule_problems(name, args)
    if problems:
        raise UserError("; ".join(problems))
    fn, settings = _RULES[name].fn, dict(args)
    if _takes_row(name, fn):
        return lambda prompt, response, row: fn(prompt, response, row, **settings)
    return lambda prompt, response, row: fn(prompt, response, **settings)


def answer_column(row: Mapping[str, Any], key: str, rule: str) -> Any:
    """``row[key]``, or a :class:`RewardError` that names the rule, the key and the columns there."""
    if key not in row:
        have = ", ".join(sorted(row)) or "none (no columns besides the prompt reached the scorer)"
        raise RewardError(
            f"reward rule {rule!r} compares with the reference answer in column {key!r}, but the rows' "
            f"columns are: {have}. Set the component's args.answer_key to the column that holds the "
            "answer, e.g. args: {answer_key: solution}"
        )
    if row[key] is None:
        raise RewardError(f"reward rule {rule!r}: this row's {key!r} is null; every row needs a reference answer")
    return row[key]


# ----------------------------------------------------------------------------- signatures


def _unknown_rule(name: str) -> str:
    close = difflib.get_close_matches(name, _RULES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"unknown reward rule {name!r}; {hint}registered rules: {', '.join(rule_names())}. "
        "Register your own with @rlhf_dist.rewards.register_rule, or use type: python"
    )


def _takes_row(name: str, fn: RuleFn) -> bool:
    """Whether ``fn`` takes the row as a third positional argument; TypeError if it cannot be a rule."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in _POSITIONAL]
    if len(positional) < 2:
        raise TypeError(
            f"reward rule {name!r} must take (prompt, response[, row]); its signature is {inspect.signature(fn)}"
        )
    return len(positional) >= 3


def _settings(fn: RuleFn) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of a rule (its args), annotations resolved where possible."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # an annotation that does not resolve: skip types
        signature = inspect.signature(fn)
    return {p.name: p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _type_problem(param: inspect.Parameter, value: Any) -> str | None:
    """The type a setting must have when ``value`` lacks it, else None."""
    expected = param.annotation
    if expected not in (str, int, float, bool):
        return None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return None
    return f"{'an' if expected is int else 'a'} {expected.__name__}"


def _describe(params: Mapping[str, inspect.Parameter]) -> str:
    if not params:
        return "no args"
    parts = []
    for p in params.values():
        kind = getattr(p.annotation, "__name__", None)
        default = "required" if p.default is inspect.Parameter.empty else f"default {p.default!r}"
        parts.append(f"{p.name} ({kind + ', ' if kind else ''}{default})")
    return "args " + ", ".join(parts)


# ----------------------------------------------------------------------------- built-in rules


@register_rule("letters")
def letters_reward(prompt: str, response: str) -> float:
    """Fraction of the response's non-whitespace characters that are ``a`` (the toy task).

    In [0, 1]; an empty or all-whitespace response scores 0.
    """
    visible = sum(1 for ch in response if not ch.isspace())
    return response.count("a") / max(1, visible)


@register_rule("length")
def length_reward(prompt: str, response: str) -> float:
    """Number of whitespace-separated words / 10, capped at 1.0."""
    return min(1.0, len(response.split()) / 10)


@register_rule("math")
def math_reward(prompt: str, response: str, row: Mapping[str, Any], *, answer_key: str = "answer") -> float:
    """1.0 when the response's final answer equals the row's reference answer, else 0.0.

    The final answer is the rest of the line after the last ``####``, else the last
    ``\\boxed{...}``, else the last number; a response with none scores 0. The reference is
    ``row[answer_key]``: ``42``, ``"42"``, ``"#### 42"`` or a whole GSM8K solution ending in it,
    ``"\\boxed{42}"``, ``"1,234"``, ``"-3"``, ``"2.5"``, ``"3/4"``. Plain numbers are compared
    exactly (``0.75`` equals ``3/4``, ``1,234`` equals ``1234``); other expressions symbolically
    (see :mod:`rlhf_dist.rewards.math_answer`).
    """
    reference = reference_answer(answer_column(row, answer_key, "math"))
    predicted = extract_answer(response)
    return float(predicted is not None and answers_match(predicted, reference))


@register_rule("exact_match")
def exact_match_reward(prompt: str, response: str, row: Mapping[str, Any], *, answer_key: str = "answer") -> float:
    """1.0 when the response, stripped, equals ``str(row[answer_key])``, stripped; else 0.0.

    Case and inner whitespace count; for numbers written in different ways use ``math``.
    """
    return float(response.strip() == str(answer_column(row, answer_key, "exact_match")).strip())


def _pattern_problems(args: Mapping[str, Any]) -> list[str]:
    try:
        re.compile(args["pattern"])
    except re.error as exc:
        return [f"reward rule 'format': args.pattern {args['pattern']!r} is not a valid regular expression: {exc}"]
    return []


@register_rule("format", check=_pattern_problems)
def format_reward(prompt: str, response: str, *, pattern: str, full_match: bool = False) -> float:
    """1.0 when the response matches the regular expression ``pattern`` (Python ``re``), else 0.0.

    The pattern may match anywhere (``re.search``) unless anchored with ``^``/``$``, or unless
    ``full_match: true``, which requires the whole response to match. ``.`` stops at newlines
    unless the pattern starts with ``(?s)``. Example: ``{pattern: '^<think>.*</think>', ...}``.
    """
    found = re.fullmatch(pattern, response) if full_match else re.search(pattern, response)
    return float(found is not None)
