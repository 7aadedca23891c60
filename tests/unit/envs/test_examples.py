"""The shipped multi-turn examples: the GSM8K tool config loads with its calculator tool, the
calculator does arithmetic and nothing else, and the word-echo env pays only a policy that reads it."""

from pathlib import Path

import pytest

from examples.envs.word_echo import WORDS, WordEchoEnv
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
    assert cfg.rollout.multi_turn.env == "examples.envs.word_echo:WordEchoEnv" and cfg.reward.components == []


def play(env, first, second):
    env.reset()
    asked = env.step(first)
    return asked.observation, env.step(second)


def test_the_word_echo_env_pays_for_the_word_it_named():
    env = WordEchoEnv({"prompt": [{"role": "user", "content": "write letters: cat"}]})
    env.seed = 7
    said, step = play(env, "anything", "")
    assert said == "say" + f" {env.word}" * 8 and env.word in WORDS and step.done and step.reward == 0.0

    def reward(seed, reply):
        env = WordEchoEnv({})
        env.seed = seed
        env.reset()
        return play(env, "x", reply.format(word=env.word))[1].reward

    assert reward(7, "{word} {word}") == 1.0 and reward(7, "{word} x {word} y") == 0.5 and reward(7, "") == 0.0
    assert reward(7, "{word}s") == 0.0  # whole words only
    # the word follows the env's seed, so replies that ignore the env score 1 in 4 whatever they say
    for fixed in WORDS:
        mean = sum(reward(seed, fixed) for seed in range(400)) / 400
        assert 0.18 < mean < 0.32, (fixed, mean)
