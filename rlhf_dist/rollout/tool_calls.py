"""Finding the tool calls in a model turn, per ``rollout.multi_turn.tool_format``.

``hermes`` (Qwen2.5/Qwen3, NousResearch): each call is ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` in the assistant's text. A block that is not such an object is a parse error:
reported back to the model as the tool message, counted, and never fatal to the trajectory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
_HERMES_BLOCK = re.compile(re.escape(HERMES_OPEN) + r"(.*?)(?:" + re.escape(HERMES_CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Any  # what the model wrote; `Tool.call` checks it


@dataclass
class ParsedTurn:
    """A model turn's calls, and the blocks that could not be read (each with the reason)."""

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def made_a_call(self) -> bool:
        """Whether the turn tried to call a tool at all (a malformed try counts: it gets an answer)."""
        return bool(self.calls or self.errors)


def parse_hermes(text: str) -> ParsedTurn:
    """The ``<tool_call>`` blocks of ``text``; an unclosed last block (a turn cut by the token
    budget) is read up to the end of the text."""
    turn = ParsedTurn()
    for match in _HERMES_BLOCK.finditer(text):
        body = match.group(1).strip()
        try:
            call = json.loads(body)
        except json.JSONDecodeError as exc:
            turn.errors.append(f"the tool call {body[:80]!r} is not valid JSON ({exc.msg} at char {exc.pos}); write "
                               '<tool_call>{"name": ..., "arguments": {...}}</tool_call>')
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            turn.errors.append(f"the tool call {body[:80]!r} has no \"name\"; write "
                               '<tool_call>{"name": ..., "arguments": {...}}</tool_call>')
            continue
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        turn.calls.append(ToolCall(call["name"], arguments))
    return turn


PARSERS = {"hermes": parse_hermes}
