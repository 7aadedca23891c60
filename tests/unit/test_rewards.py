"""Rewards: rules, the composite's weighted sum and checks, python, remote and model components."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rlhf_dist import rewards
from rlhf_dist.config.schema import RewardComponent, RewardConfig
from rlhf_dist.errors import UserError
from rlhf_dist.rewards import (
    CompositeReward,
    RemoteReward,
    RewardError,
    RewardModel,
    get_rule,
    load_python_function,
    register_rule,
    rule_names,
)


def composite(*components, **kwargs) -> CompositeReward:
    return CompositeReward(RewardConfig(components=list(components), **kwargs))


def rule(name, weight=1.0) -> RewardComponent:
    return RewardComponent(type="rule", name=name, weight=weight)


# ----------------------------------------------------------------------------- rules


@pytest.fixture
def scratch_registry(monkeypatch):
    """Rules a test registers vanish when it ends."""
    monkeypatch.setattr(rewards, "_RULES", dict(rewards._RULES))


@pytest.mark.parametrize(
    "response, expected",
    [
        ("", 0.0),
        ("   \n\t", 0.0),
        ("aaaa", 1.0),
        ("a b", 0.5),  # the space is ignored: 1 of 2 visible characters
        ("banana", 0.5),  # 3 a's in 6
        ("Aa a", 2 / 3),  # capital A is not "a"
        ("xyz", 0.0),
    ],
)
def test_letters_rule_on_hand_worked_strings(response, expected):
    assert get_rule("letters")("ignored prompt", response) == pytest.approx(expected)


def test_length_rule_counts_words_and_caps_at_one():
    length = get_rule("length")
    assert length("p", "one two three") == pytest.approx(0.3)
    assert length("p", "") == 0.0
    assert length("p", " ".join(["w"] * 25)) == 1.0


def test_registry_lists_builtins_and_accepts_new_rules(scratch_registry):
    assert {"letters", "length"} <= set(rule_names())

    @register_rule("test_const_two")
    def two(prompt: str, response: str) -> float:
        return 2.0

    assert get_rule("test_const_two") is two
    with pytest.raises(ValueError, match="already registered"):
        register_rule("letters")(lambda p, r: 0.0)


def test_unknown_rule_suggests_a_name_and_lists_the_registry():
    with pytest.raises(UserError) as info:
        get_rule("leters")
    message = str(info.value)
    assert "'leters'" in message and "did you mean 'letters'?" in message and "length" in message


# ----------------------------------------------------------------------------- the composite


def test_weighted_sum_of_two_components_keeps_unweighted_parts():
    reward = composite(rule("letters", 2.0), rule("length", -0.5))
    responses = ["aa bb", "a", ""]
    result = reward.score(["p"] * 3, responses)
    letters = torch.tensor([0.5, 1.0, 0.0])
    length = torch.tensor([0.2, 0.1, 0.0])
    torch.testing.assert_close(result.components["letters"], letters)
    torch.testing.assert_close(result.components["length"], length)
    torch.testing.assert_close(result.total, 2.0 * letters - 0.5 * length)
    assert result.total.dtype == torch.float32 and result.total.shape == (3,)
    assert result.gold is None


def test_gold_is_scored_separately_and_clip_applies_to_total():
    reward = composite(rule("letters", 10.0), gold="letters", clip=3.0)
    result = reward.score(["p", "p"], ["aaaa", "abcd"])
    torch.testing.assert_close(result.total, torch.tensor([3.0, 2.5]))  # 10.0 clipped, 2.5 kept
    torch.testing.assert_close(result.gold, torch.tensor([1.0, 0.25]))


def test_repeated_label_is_rejected():
    with pytest.raises(UserError, match="more than once"):
        composite(rule("letters"), rule("letters"))


def test_raising_rule_names_the_rule_and_sample(scratch_registry):
    @register_rule("test_fails_on_b")
    def fails_on_b(prompt: str, response: str) -> float:
        if "b" in response:
            raise KeyError("no b allowed")
        return 1.0

    reward = composite(rule("test_fails_on_b"))
    with pytest.raises(RewardError) as info:
        reward.score(["p"] * 3, ["a", "a", "b"])
    assert "'test_fails_on_b'" in str(info.value) and "sample 2" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


# ----------------------------------------------------------------------------- python components


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import math\n"
        "def per_length(prompts, responses):\n"
        "    return [len(r) for r in responses]\n"
        "def with_nan(prompts, responses):\n"
        "    return [0.0, math.nan, 1.0][: len(responses)]\n"
        "def with_inf(prompts, responses):\n"
        "    return [1.0, 2.0, -math.inf][: len(responses)]\n"
        "def too_short(prompts, responses):\n"
        "    return [1.0]\n"
        "def boom(prompts, responses):\n"
        "    raise RuntimeError('reward server down')\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_python_component_is_called_batched(user_module):
    reward = composite(
        RewardComponent(type="python", path=f"{user_module}:per_length", weight=0.5),
        RewardComponent(type="python", path=f"{user_module}:per_length", name="len2"),
    )
    result = reward.score(["p", "q"], ["abc", "a"])
    torch.testing.assert_close(result.components["per_length"], torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(result.total, torch.tensor([4.5, 1.5]))
    assert set(result.components) == {"per_length", "len2"}


@pytest.mark.parametrize(
    "function, fragments",
    [
        ("with_nan", ["'with_nan'", "nan", "sample 1"]),
        ("with_inf", ["'with_inf'", "-inf", "sample 2"]),
        ("too_short", ["'too_short'", "(1,)", "3 samples"]),
        ("boom", ["'boom'", "RuntimeError", "reward server down"]),
    ],
)
def test_bad_component_output_names_the_component(user_module, function, fragments):
    reward = composite(RewardComponent(type="python", path=f"{user_module}:{function}"))
    with pytest.raises(RewardError) as info:
        reward.score(["p"] * 3, ["a", "b", "c"])
    for fragment in fragments:
        assert fragment in str(info.value)


def test_load_python_function_errors(user_module):
    assert load_python_function(f"{user_module}:per_length")([], ["ab"]) == [2]
    with pytest.raises(UserError, match="module:function"):
        load_python_function("no_colon_here")
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        load_python_function("no_such_module_xyz:f")
    with pytest.raises(UserError, match="no attribute 'per_lenght'; did you mean 'per_length'"):
        load_python_function(f"{user_module}:per_lenght")
    with pytest.raises(UserError, match="is a int, not a function"):
        load_python_function(f"{user_module}:NOT_A_FUNCTION")


# ----------------------------------------------------------------------------- remote components


class _Handler(BaseHTTPRequestHandler):
    """Answers per path: /good (1 per char), /garbage, /short, /slow (sleeps past the timeout)."""

    hits: dict[str, int] = {}

    def do_POST(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/good":
            body = json.dumps({"rewards": [len(r) for r in request["responses"]]}).encode()
        elif self.path == "/garbage":
            body = b"<html>oops</html>"
        elif self.path == "/short":
            body = json.dumps({"rewards": [1.0]}).encode()
        elif self.path == "/big":
            body = json.dumps({"rewards": [0.0] * 1000}).encode()
        elif self.path == "/flaky" and self.hits[self.path] % 3 != 0:  # two 503s, then an answer
            self.send_error(503, "busy")
            return
        elif self.path == "/flaky":
            body = json.dumps({"rewards": [7.0] * len(request["responses"])}).encode()
        else:
            time.sleep(1.0)
            body = b"{}"
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (the timeout case)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.handle_error = lambda *args: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_remote_good_answer(server):
    reward = composite(RewardComponent(type="remote", url=f"{server}/good", weight=2.0))
    result = reward.score(["p", "p"], ["abc", ""])
    torch.testing.assert_close(result.components["remote"], torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(result.total, torch.tensor([6.0, 0.0]))


def test_remote_garbage_answer_is_a_reward_error(server):
    with pytest.raises(RewardError, match=r"/garbage answered with non-JSON .*<html>"):
        RemoteReward(f"{server}/garbage", timeout_s=2.0)(["p"], ["r"])


def test_remote_wrong_length_names_the_component(server):
    reward = composite(RewardComponent(type="remote", name="judge", url=f"{server}/short"))
    with pytest.raises(RewardError, match=r"'judge' \(remote .*/short\) returned shape \(1,\) for 2 samples"):
        reward.score(["p", "p"], ["a", "b"])


def test_remote_oversize_answer_is_refused(server):
    with pytest.raises(RewardError, match="more than 100 bytes"):
        RemoteReward(f"{server}/big", timeout_s=2.0, max_response_bytes=100)(["p"], ["r"])


def test_remote_timeout_is_retried_then_reported(server):
    remote = RemoteReward(f"{server}/slow", timeout_s=0.2, retries=1, backoff_s=0.05)
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        remote(["p"], ["r"])
    assert time.monotonic() - start < 1.5
    assert "/slow failed 2 time(s)" in str(info.value) and "timed out" in str(info.value)
    assert _Handler.hits["/slow"] == 2


def test_remote_5xx_is_retried_with_the_configured_budget(server):
    flaky = RewardComponent(type="remote", url=f"{server}/flaky")
    start = time.monotonic()
    result = RewardConfig(components=[flaky], retries=2, backoff_s=0.1)
    assert CompositeReward(result).score(["p"], ["r"]).total.tolist() == [7.0]
    assert time.monotonic() - start >= 0.1 + 0.2, "backoff 0.1 s, then 0.2 s"
    assert _Handler.hits["/flaky"] == 3
    with pytest.raises(RewardError, match="/flaky failed 2 time.*HTTP 503"):
        CompositeReward(RewardConfig(components=[flaky], retries=1, backoff_s=0.0)).score(["p"], ["r"])


def test_remote_connection_refused_is_reported():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as unused:
        port = unused.server_address[1]  # bound then closed: nothing listens there afterwards
    with pytest.raises(RewardError, match=f"127.0.0.1:{port} failed 1 time"):
        RemoteReward(f"http://127.0.0.1:{port}", timeout_s=1.0, retries=0)(["p"], ["r"])


# ----------------------------------------------------------------------------- reward model


def test_reward_model_scores_match_an_unpadded_forward(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_dist.tiny import make_tiny

    path = str(make_tiny(tmp_path).reward)
    prompts = ["write letters: cat", "write letters: red banana plum", "say"]
    responses = [" aaa", " a b", " the big yellow sun is happy and the moon is sad"]
    scores = RewardModel(path)(prompts, responses)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        for i in range(3):  # the shorter samples are padded in the batch; the scores must not care
            ids = tokenizer(prompts[i] + responses[i], return_tensors="pt")
            direct = model(**ids).logits[0, 0].item()
            assert math.isclose(scores[i].item(), direct, abs_tol=1e-5), (i, scores[i].item(), direct)
    assert len(set(scores.tolist())) == 3


def test_missing_reward_model_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load"):
        RewardModel(str(tmp_path / "nope"))


def test_importing_rewards_loads_no_distributed_stack():
    import subprocess
    import sys

    code = (
        "import sys, rlhf_dist.rewards, rlhf_dist.models;"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm', 'deepspeed'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"rlhf_dist.rewards pulled in: {out.stdout.strip()}"
