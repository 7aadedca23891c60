"""The shipped multi-turn examples: the GSM8K tool config loads with its calculator tool, the
calculator does arithmetic and nothing else, and the letter-echo env pays only a policy that reads it."""

from pathlib import Path

import pytest

from examples.envs.letter_echo import LetterEchoEnv
from rlhf_dist.config import load_config
from rlhf_dist.envs import ToolError
from rlhf_dist.rollout.multi_turn import load_tools

EXAMPLES = Path(__file__).parents[3] / "examples"


def test_the_tools_gsm8k_example_loads_with_its_calculator():
    cfg = load_config(str(EXAMPLES / "tools_gsm8k.yaml"))
    mt = cfg.rollout.multi_turn
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct" and mt.tool_format == "hermes" and mt.env is None
    [tool] = load_tools(mt)
    assert tool.name == "calculator" and tool.schema["function"]["parameters"]["required"] == ["expression"]
    assert tool.call({"expression": "(12 + 30) * 4 / 3"}) == "56"
    with pytest.raises(ToolError, match="not arithmetic"):
        tool.call({"expression": "__import__('os').getcwd()"})
    assert cfg.data.prompts.endswith("train.parquet") and cfg.reward.components[0].name == "math"


def test_the_multiturn_env_example_is_a_valid_config():
    cfg = load_config(str(EXAMPLES / "multiturn_env.yaml"))
    assert cfg.rollout.multi_turn.env == "examples.envs.letter_echo:LetterEchoEnv" and cfg.reward.components == []


def play(env, first, second):
    env.reset()
    asked = env.step(first)
    return asked.observation, env.step(second)


def test_the_letter_echo_env_pays_for_the_letter_it_named():
    row = {"prompt": [{"role": "user", "content": "write letters: cat"}]}
    said, step = play(LetterEchoEnv(row), "anything", "")
    letter = LetterEchoEnv(row).letter
    assert said == f"say {letter * 6}" and step.done and step.reward == 0.0
    assert play(LetterEchoEnv(row), "x", letter * 4 + " b")[1].reward == pytest.approx(0.8)
    # a reply that ignores the env: over many prompts, at most 1 in 4
    rewards = [play(LetterEchoEnv({"prompt": [{"role": "user", "content": f"p{i}"}]}), "x", "aaaa")[1].reward
               for i in range(400)]
    assert 0.15 < sum(rewards) / len(rewards) < 0.35
