"""The trajectory player of a rollout worker, over a scripted engine function: every request played
as a trajectory (env seeded, turns seeded), failed attempts retried and recorded, short trajectories
done before long ones, and the samples carrying what the driver needs."""

import threading
import time

import pytest

from rlhf_dist.config.multi_turn import MultiTurnConfig
from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.envs import Step
from rlhf_dist.models.tiny import train_tokenizer
from rlhf_dist.rollout.multi_turn import MultiTurnSpec, TrajectoryPlayer, turn_seed
from rlhf_dist.rollout.requests import Request, Sample

SAMPLING = SamplingConfig(max_new_tokens=8)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer()


class CountdownEnv:
    """Done after ``row["turns"]`` model turns; each turn earns 0.5; raises when ``row["fail"]``."""

    def __init__(self, row, delay=0.0):
        self.row, self.delay, self.steps = row, delay, 0

    def reset(self):
        if self.row.get("fail") and self.seed % 1 == 0:
            raise RuntimeError("the env broke")
        return "go"

    def step(self, reply):
        time.sleep(self.delay)
        self.steps += 1
        return Step(observation="again", reward=0.5, done=self.steps >= self.row["turns"])


def scripted_engine(tok, reply="ok"):
    """An engine function: every request answers ``reply`` then eos; the requests are recorded."""
    calls = []
    lock = threading.Lock()

    def generate(requests, sampling):
        with lock:
            calls.append([(r.prompt_index, len(r.prompt_ids), r.seed, r.max_tokens) for r in requests])
        out = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return [Sample(r.prompt_index, r.sample_index, out[: r.max_tokens], [-0.5] * len(out[: r.max_tokens]), reply)
                for r in requests]

    generate.calls = calls
    return generate


def player(tok, **settings):
    mt = MultiTurnConfig(env=f"{__name__}:CountdownEnv", **{"max_total_tokens": 256, **settings})
    return TrajectoryPlayer(MultiTurnSpec(mt, run_seed=7), tok)


def requests(tok, rows):
    messages = [{"role": "user", "content": "count down"}]
    ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
              add_special_tokens=False)["input_ids"]
    return [Request(i, 0, ids, seed=100 + i, messages=messages, row=row) for i, row in enumerate(rows)]


def test_each_request_is_played_to_its_stop_with_model_tokens_masked_and_turn_rewards_at_turn_ends(tok):
    engine = scripted_engine(tok)
    samples = player(tok, max_turns=4).play(requests(tok, [{"turns": 1}, {"turns": 3}, {"turns": 9}]), SAMPLING, 5, engine)
    assert [s.multi.stop for s in samples] == ["done", "done", "max_turns"]
    assert [s.multi.turns for s in samples] == [1, 3, 4]
    assert [s.multi.turn_rewards for s in samples] == [[0.5], [0.5] * 3, [0.5] * 4]
    for s in samples:
        mask = s.multi.model_mask
        assert len(mask) == len(s.response_ids) == len(s.logprobs)
        per_turn = len(tok("ok", add_special_tokens=False)["input_ids"]) + 1
        assert sum(mask) == s.multi.turns * per_turn  # "ok" and eos per turn, nothing else is the model's
        assert all(lp == -0.5 for lp, m in zip(s.logprobs, mask) if m) and all(lp == 0 for lp, m in zip(s.logprobs, mask) if not m)
        assert all(mask[end] == 1 for end in s.multi.turn_ends)
        assert s.text == "ok" and s.multi.transcript[-1]["role"] in ("assistant", "user")
        # the env's reset ("go") joined the prompt: it is prompt text, not the model's
        assert tok.decode(s.multi.prompt_ids).endswith("<|user|>\ngo</s><|assistant|>\n")


def test_turns_are_seeded_per_turn_and_capped_by_the_room_left(tok):
    engine = scripted_engine(tok)
    player(tok, max_turns=3).play(requests(tok, [{"turns": 3}]), SAMPLING, 0, engine)
    seeds = [seed for call in engine.calls for _, _, seed, _ in call]
    assert seeds == [turn_seed(100, t, 0) for t in range(3)] and seeds[0] == 100
    lengths = [length for call in engine.calls for _, length, _, _ in call]
    assert lengths == sorted(lengths) and len(set(lengths)) == 3  # each turn sends the whole held trajectory
    assert all(cap == SAMPLING.max_new_tokens for call in engine.calls for *_, cap in call)


def test_a_failing_env_is_retried_recorded_and_marks_the_sample_failed(tok):
    engine = scripted_engine(tok)
    samples = player(tok, errors={"retries": 2}).play(requests(tok, [{"turns": 1}, {"turns": 1, "fail": True}]),
                                                      SAMPLING, 3, engine)
    ok, bad = samples
    assert not ok.multi.failed and ok.multi.errors == []
    assert bad.multi.failed and bad.response_ids == [] and len(bad.multi.errors) == 3
    assert [e["attempt"] for e in bad.multi.errors] == [0, 1, 2]
    first = bad.multi.errors[0]
    assert (first["step"], first["prompt_index"], first["phase"]) == (3, 1, "reset")
    assert first["error"] == {"type": "RuntimeError", "message": "the env broke"} and "the env broke" in first["traceback"]


def test_a_short_trajectory_finishes_while_a_long_one_still_plays(tok):
    engine = scripted_engine(tok)
    rows = [{"turns": 1}] * 5 + [{"turns": 6}]
    started = time.monotonic()
    samples = TrajectoryPlayer(MultiTurnSpec(MultiTurnConfig(env=f"{__name__}:SlowEnv", max_turns=8, max_total_tokens=400), 0), tok).play(
        requests(tok, rows), SAMPLING, 0, engine)
    took = time.monotonic() - started
    short = [s.multi.seconds["finished_at"] for s in samples[:5]]
    long = samples[5].multi.seconds["finished_at"]
    assert max(short) < long / 3  # they did not wait for the long one's turns
    assert took < 11 * SlowEnv.DELAY  # the env calls overlapped: less than all of them one after another


class SlowEnv(CountdownEnv):
    DELAY = 0.3

    def __init__(self, row):
        super().__init__(row, delay=self.DELAY)


def calls(tok, *blocks):
    """An engine whose k-th turn of every trajectory answers blocks[k] (hermes tool calls), then "done"."""
    eos = [tok.eos_token_id]

    def generate(requests, sampling):
        out = []
        for r in requests:
            turn = tok.decode(r.prompt_ids).count("<|assistant|>") - 1  # turns held so far
            text = blocks[turn] if turn < len(blocks) else "done"
            ids = tok(text, add_special_tokens=False)["input_ids"][: r.max_tokens - 1] + eos
            out.append(Sample(r.prompt_index, r.sample_index, ids, [-0.1] * len(ids), text))
        return out

    return generate


def hermes(name, **arguments):
    import json

    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_stuck_tool_times_out_as_text_and_a_huge_answer_is_cut(tok, isolation):
    mt = MultiTurnConfig(tools=["tests.unit.rollout.chaos_envs:sleepy", "tests.unit.rollout.chaos_envs:huge"],
                         max_turns=3, max_total_tokens=1000, max_observation_tokens=20, isolation=isolation,
                         timeouts={"tool": 1.0})
    engine = calls(tok, hermes("sleepy", seconds=60), hermes("huge", n=10))
    started = time.monotonic()
    [sample] = TrajectoryPlayer(MultiTurnSpec(mt, 0), tok).play(requests(tok, [{}]), SamplingConfig(max_new_tokens=64),
                                                                0, engine)
    assert time.monotonic() - started < 20
    info = sample.multi
    assert info.counts["tool_timeouts"] == 1 and info.counts["tool_calls"] == 2 and info.stop == "no_tool_call"
    tool_messages = [m["content"] for m in info.transcript if m["role"] == "tool"]
    assert "took more than 1 s" in tool_messages[0]
    assert tool_messages[1].endswith("max_observation_tokens]") and len(tool_messages[1]) < 400


def test_an_isolated_env_that_dies_fails_the_attempt_and_the_retry_gets_a_fresh_process(tok):
    from rlhf_dist.rollout.attempts import env_seed

    mt = MultiTurnConfig(env="tests.unit.rollout.chaos_envs:DyingEnv", isolation="process", max_total_tokens=300,
                         errors={"retries": 1})
    row = {"die": True, "die_seed": env_seed(0, 0, 0, 0, 0)}  # dies on the first attempt only
    engine = calls(tok, hermes("lookup", key="k"))
    [sample] = TrajectoryPlayer(MultiTurnSpec(mt, 0), tok).play(requests(tok, [row]), SamplingConfig(max_new_tokens=64),
                                                                0, engine)
    info = sample.multi
    assert not info.failed and info.stop == "done" and info.turn_rewards[-1] == 1.0
    [error] = info.errors
    assert error["phase"] == "step" and error["error"]["type"] == "ChildDied" and "exit code 3" in error["error"]["message"]
    # the env's own tool ran in the second attempt's process, bound to that env (its seed)
    assert {"role": "tool", "content": f"k={env_seed(0, 0, 0, 0, 1)}"} in info.transcript
