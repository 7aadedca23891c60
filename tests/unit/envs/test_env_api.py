"""The env and tool API (public, stable): Step and its dict form, env classes and their bound tools,
tool schemas from hints and docstrings, calls whose failures become text, and hermes tool calls."""

import json

import pytest

from rlhf_dist.envs import Step, Tool, ToolError, as_step, env_tools, load_env_class, tool
from rlhf_dist.envs.api import finish
from rlhf_dist.errors import UserError
from rlhf_dist.rollout.tool_calls import parse_hermes


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def undocumented(a: int) -> int:
    return a


class WordEnv:
    def __init__(self, row, word="cat"):
        self.row, self.word = row, word

    def reset(self):
        return f"say {self.word}"

    def step(self, reply):
        return {"reward": float(self.word in reply), "done": True}

    @tool
    def lookup(self, key: str) -> str:
        """Look a key up in the row.

        Args:
            key: the column to read
        """
        return str(self.row[key])

    async def close(self):
        return "closed"


def test_a_step_comes_as_a_step_or_a_dict_and_anything_else_is_named():
    assert as_step(Step("hi", 1, True), "env.step") == Step("hi", 1.0, True, {})
    assert as_step({"observation": [{"role": "user", "content": "x"}], "reward": 2}, "env.step").reward == 2.0
    with pytest.raises(TypeError, match=r"env.step returned a dict with unknown keys \['score'\]"):
        as_step({"score": 1}, "env.step")
    with pytest.raises(TypeError, match="returned str; return a rlhf_dist.envs.Step"):
        as_step("done", "env.step")
    with pytest.raises(TypeError, match="reward is 'high'; give a number"):
        as_step({"reward": "high"}, "env.step")


def test_tools_get_their_schema_from_hints_and_docstrings_and_failures_become_text():
    t = Tool.from_function(multiply, "tools.0")
    assert t.name == "multiply" and t.schema["function"]["parameters"]["required"] == ["a", "b"]
    assert t.schema["function"]["parameters"]["properties"]["a"] == {"type": "integer", "description": "the first factor"}
    assert t.call({"a": 12, "b": 13}) == "156"
    with pytest.raises(ToolError, match=r"multiply: unknown argument\(s\) \['c'\]; missing argument\(s\) \['b'\]"):
        t.call({"a": 1, "c": 2})
    with pytest.raises(ToolError, match="always_fails raised TypeError: no"):
        Tool.from_function(always_fails, "tools.2").call({"a": 1})
    with pytest.raises(UserError, match="tool tools.1: .*'Args:' section"):
        Tool.from_function(undocumented, "tools.1")


def always_fails(a: int) -> int:
    """Always fails.

    Args:
        a: ignored
    """
    raise TypeError("no")


def test_env_classes_their_bound_tools_and_async_methods(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text("class NotAnEnv:\n    pass\nvalue = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="has no reset or step method"):
        load_env_class("my_envs:NotAnEnv")
    with pytest.raises(UserError, match="'my_envs:value' is a int, not a function"):
        load_env_class("my_envs:value")
    env = WordEnv({"answer": 42}, word="dog")
    tools = env_tools(env)
    assert [t.name for t in tools] == ["lookup"] and tools[0].call({"key": "answer"}) == "42"
    assert finish(env.close()) == "closed" and finish(env.reset()) == "say dog"


def test_hermes_calls_are_read_and_malformed_ones_are_reported_not_raised():
    text = ('let me compute <tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 13}}</tool_call> and '
            '<tool_call>{"name": "multiply", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}</tool_call>')
    turn = parse_hermes(text)
    assert [(c.name, c.arguments) for c in turn.calls] == [("multiply", {"a": 12, "b": 13}), ("multiply", {"a": 2, "b": 3})]
    bad = parse_hermes('<tool_call>{"name": multiply}</tool_call><tool_call>{"arguments": {}}</tool_call>')
    assert not bad.calls and len(bad.errors) == 2 and bad.made_a_call
    assert "is not valid JSON" in bad.errors[0] and 'has no "name"' in bad.errors[1]
    cut = parse_hermes('<tool_call>{"name": "multiply", "arguments": {"a": 1, "b": 2}}')  # unclosed: budget ran out
    assert [c.arguments for c in cut.calls] == [{"a": 1, "b": 2}]
    assert not parse_hermes("no call here").made_a_call
    assert json.loads(json.dumps(Tool.from_function(multiply, "t").schema))  # what the chat template receives
