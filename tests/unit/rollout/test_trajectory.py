"""One multi-turn trajectory over a scripted sampler: tool calls answered (failures as text), env
turns rewarded, limits exact, and the tape always what the template renders for the conversation."""


import pytest

from rlhf_dist.envs import Step, Tool
from rlhf_dist.rollout.chat_probe import probe_template
from rlhf_dist.rollout.tool_calls import parse_hermes
from rlhf_dist.rollout.trajectory import CUT_MARKER, Limits, run_trajectory
from tests.unit.rollout.test_tape_and_probe import QWEN_LIKE, ids


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


@pytest.fixture(scope="module")
def tok(qwen_tokenizer):
    return qwen_tokenizer


def scripted(tok, replies, stop=True):
    """A sampler that answers the scripted replies in turn (each ending with <|im_end|> when ``stop``)."""
    queue, seen = list(replies), []

    def sample(held, room):
        seen.append((len(held), room))
        out = ids(tok, queue.pop(0)) + ([tok.convert_tokens_to_ids("<|im_end|>")] if stop else [])
        return out, [-0.25] * len(out)

    sample.seen = seen
    return sample


def start(tok, question="what is 12 times 13?"):
    messages = [{"role": "user", "content": question}]
    text = tok.apply_chat_template(messages, chat_template=QWEN_LIKE, add_generation_prompt=True, tokenize=False)
    return ids(tok, text), messages


def rendered(tok, transcript):
    return ids(tok, tok.apply_chat_template(transcript, chat_template=QWEN_LIKE, tokenize=False))


LIMITS = Limits(max_turns=4, max_total_tokens=600, max_observation_tokens=200)


def test_a_tool_call_is_answered_and_the_tape_is_the_rendered_conversation(tok):
    probe = probe_template(tok, QWEN_LIKE)
    call = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 13}}</tool_call>'
    run = run_trajectory(*start(tok), scripted(tok, [call, "it is 156"]), tok, probe, LIMITS, parse_hermes,
                         [Tool.from_function(multiply, "tools.0")])
    assert run.stop == "no_tool_call" and run.turns == 2 and run.tool_calls == 1 and run.tool_errors == 0
    assert [m["role"] for m in run.transcript] == ["user", "assistant", "tool", "assistant"]
    assert run.transcript[2]["content"] == "156" and run.final_reply == "it is 156"
    assert run.tape.ids == rendered(tok, run.transcript)
    assert run.tape.model_tokens == sum(run.tape.loss_mask) == len(ids(tok, call)) + len(ids(tok, "it is 156")) + 2


def test_tool_failures_become_the_tool_message_and_are_counted(tok):
    probe = probe_template(tok, QWEN_LIKE)
    replies = ['<tool_call>{"name": "divide", "arguments": {}}</tool_call>',
               '<tool_call>{"name": "multiply", "arguments": {"a": 1}}</tool_call>',
               '<tool_call>{"name": multiply}</tool_call>', "I give up"]
    run = run_trajectory(*start(tok), scripted(tok, replies), tok, probe, LIMITS, parse_hermes,
                         [Tool.from_function(multiply, "tools.0")])
    answers = [m["content"] for m in run.transcript if m["role"] == "tool"]
    assert answers[0] == "error: unknown tool 'divide'; the tools are ['multiply']"
    assert answers[1].startswith("error: multiply: missing argument(s) ['b']")
    assert answers[2].startswith("error: the tool call") and "is not valid JSON" in answers[2]
    assert (run.tool_calls, run.tool_errors, run.parse_errors, run.stop) == (2, 2, 1, "no_tool_call")


class EchoEnv:
    """Names a word; the next turn earns 1 for repeating it. Done after two rewarded turns."""

    def __init__(self, row):
        self.row, self.rewarded = row, 0

    def reset(self):
        return "say " + self.row["word"]

    def step(self, reply):
        self.rewarded += 1
        return Step(observation="again: " + self.row["word"] * 30, reward=float(self.row["word"] in reply),
                    done=self.rewarded == 2)


def test_env_turns_are_rewarded_observations_cut_with_a_marker_and_done_ends_it(tok):
    probe = probe_template(tok, QWEN_LIKE)
    run = run_trajectory(*start(tok, "play"), scripted(tok, ["cat", "dog"]), tok, probe, Limits(4, 600, 40), parse_hermes,
                         [], env=EchoEnv({"word": "cat"}))
    assert run.stop == "done" and run.turn_rewards == [1.0, 0.0]
    observation = run.transcript[3]["content"]
    assert observation.endswith(CUT_MARKER) and len(ids(tok, observation[: -len(CUT_MARKER)])) <= 40
    assert run.transcript[1] == {"role": "user", "content": "say cat"}  # reset's answer follows the prompt
    assert run.tape.ids == rendered(tok, run.transcript)[: len(run.tape)]
    assert run.tape.count("env") > 0 and all(m == 0 for m, s in zip(run.tape.loss_mask, run.tape.sources) if s == "env")


def test_limits_are_exact(tok):
    probe = probe_template(tok, QWEN_LIKE)
    call = '<tool_call>{"name": "multiply", "arguments": {"a": 1, "b": 2}}</tool_call>'
    tools = [Tool.from_function(multiply, "tools.0")]
    turns = run_trajectory(*start(tok), scripted(tok, [call] * 5), tok, probe, Limits(3, 1000, 40), parse_hermes, tools)
    assert turns.stop == "max_turns" and turns.turns == 3
    sampler = scripted(tok, [call * 3] * 5, stop=False)
    small = run_trajectory(*start(tok), sampler, tok, probe, Limits(5, 120, 40), parse_hermes, tools)
    assert small.stop == "max_tokens" and len(small.tape) <= 120
    assert all(room == 120 - held for held, room in sampler.seen)  # a turn is asked for at most what is left
    assert small.tape.model_tokens == sum(small.tape.loss_mask)


class FlakyEnv:
    """Fails in step on its first attempt (its seed tells the attempts apart), then plays."""

    fail_seeds: set = set()

    def __init__(self, row, mode="raise"):
        self.row, self.mode = row, mode

    def reset(self):
        return None

    def step(self, reply):
        if self.seed in FlakyEnv.fail_seeds:
            if self.mode == "hang":
                import time
                time.sleep(30)
            raise RuntimeError("the env's backend is down")
        return {"reward": 1.0, "done": True}


def test_a_failing_env_is_retried_with_a_fresh_env_and_each_failed_attempt_recorded(tok):
    from rlhf_dist.rollout.attempts import env_seed, make_env, play_sample

    probe = probe_template(tok, QWEN_LIKE)
    FlakyEnv.fail_seeds = {env_seed(0, 3, 1, 2, 0)}  # the first attempt of (step 3, prompt 1, sample 2)
    where = {"step": 3, "prompt_index": 1, "sample_index": 2}

    def play(attempt, mode="raise"):
        env = make_env(FlakyEnv, {"word": "cat"}, {"mode": mode}, env_seed(0, 3, 1, 2, attempt))
        return run_trajectory(*start(tok), scripted(tok, ["an answer"]), tok, probe, Limits(4, 600, 40, env_timeout_s=0.5),
                              parse_hermes, [], env=env)

    outcome = play_sample(play, where, retries=1)
    assert outcome.trajectory is not None and outcome.trajectory.turn_rewards == [1.0]
    [record] = outcome.errors
    assert {k: record[k] for k in ("step", "prompt_index", "sample_index", "attempt", "turn", "phase")} == {
        **where, "attempt": 0, "turn": 1, "phase": "step"}
    assert record["error"] == {"type": "RuntimeError", "message": "the env's backend is down"}
    assert "RuntimeError" in record["traceback"] and record["transcript"][-1]["content"] == "an answer"
    hung = play_sample(lambda attempt: play(attempt, "hang"), where, retries=0)  # a stuck step times out
    assert hung.trajectory is None and hung.errors[0]["error"]["type"] == "TimeoutError"


def test_a_group_with_a_failed_sample_is_dropped_and_the_error_budget_stops_the_run():
    from rlhf_dist.rollout.attempts import Outcome, RolloutFailures, check_error_budget, kept_groups

    record = {"step": 0, "prompt_index": 1, "sample_index": 0, "turn": 2, "phase": "step",
              "error": {"type": "KeyError", "message": "'answer'"}}
    ok, bad = Outcome(trajectory=object()), Outcome(None, [record])
    groups = [[ok, ok], [bad, ok], [ok, ok], [ok, ok]]
    assert kept_groups(groups) == [0, 2, 3]
    check_error_budget(groups, 0.2, first_step=True, env_name="my_env:Env", errors_file="run/rollout_errors.jsonl")
    with pytest.raises(RolloutFailures) as info:
        check_error_budget(groups, 0.1, first_step=False, env_name="my_env:Env", errors_file="run/rollout_errors.jsonl")
    assert str(info.value) == (
        "1 of 8 trajectories failed at step 0 (more than rollout.multi_turn.errors.max_error_frac=0.1). The env "
        "my_env:Env raised KeyError: 'answer' in step at turn 2 of prompt 1, sample 0; every failed attempt is in "
        "run/rollout_errors.jsonl")
    with pytest.raises(RolloutFailures, match="and it is the first step"):
        check_error_budget([[bad, bad]], 1.0, first_step=True, env_name="E", errors_file="f")


def slow(x: int) -> int:
    """Never answers in time.

    Args:
        x: ignored
    """
    import time
    time.sleep(30)
    return x


def test_a_tool_past_its_timeout_is_answered_with_the_timeout_and_the_trajectory_goes_on(tok):
    probe = probe_template(tok, QWEN_LIKE)
    call = '<tool_call>{"name": "slow", "arguments": {"x": 1}}</tool_call>'
    run = run_trajectory(*start(tok), scripted(tok, [call, "done"]), tok, probe,
                         Limits(4, 600, 200, tool_timeout_s=0.3), parse_hermes, [Tool.from_function(slow, "tools.0")])
    assert run.tool_timeouts == 1 and run.stop == "no_tool_call"
    assert run.transcript[2] == {"role": "tool", "content": "error: tool slow took more than 0.3 s"}
