"""Tools: plain functions with type hints and a docstring; their JSON schema for the chat template's
``tools=``, and a call that turns anything going wrong into text for the tool message."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhf_dist.errors import UserError


class ToolError(Exception):
    """A call the tool could not serve: unknown arguments, missing ones, or the tool raised. Its text
    becomes the tool message, and the trajectory goes on."""


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., Any]
    schema: dict  # {"type": "function", "function": {name, description, parameters}}, as chat templates take it

    @classmethod
    def from_function(cls, fn: Callable[..., Any], where: str) -> Tool:
        """The tool of ``fn``; ``where`` (its config entry) heads a refusal. The schema is read from the
        type hints and the Google-style docstring (a summary line, then ``Args:`` with each parameter)."""
        from transformers.utils import get_json_schema

        try:
            schema = get_json_schema(fn)
        except Exception as exc:  # no docstring, an undocumented parameter, a hint JSON cannot express
            raise UserError(
                f"tool {where}: {exc}. A tool needs type hints on every parameter and a docstring with a summary "
                "line and an 'Args:' section describing each one"
            ) from None
        return cls(schema["function"]["name"], fn, schema)

    def call(self, arguments: Any) -> str:
        """Run the tool on the model's ``arguments`` (a JSON object); its result as text. Raises
        :class:`ToolError` with the text the model should read when the call cannot be served."""
        if not isinstance(arguments, dict):
            raise ToolError(f"{self.name}: arguments must be a JSON object, got {json.dumps(arguments)[:100]}")
        params = self.schema["function"]["parameters"]
        known, required = set(params.get("properties", {})), set(params.get("required", []))
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(self.fn))
        unknown, missing = sorted(set(arguments) - known), sorted(required - set(arguments))
        parts = []
        if unknown and not takes_any:
            parts.append(f"unknown argument(s) {unknown}")
        if missing:
            parts.append(f"missing argument(s) {missing}")
        if parts:
            raise ToolError(f"{self.name}: {'; '.join(parts)}; it takes {sorted(known)}")
        try:
            result = self.fn(**arguments)
        except Exception as exc:
            raise ToolError(f"{self.name} raised {type(exc).__name__}: {exc}") from exc
        return result_text(result)


def result_text(result: Any) -> str:
    """A tool's result as the text of its message: a ``str`` as it is, anything else as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
