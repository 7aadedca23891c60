"""Rewards: the composite's weighted sum and checks, the gold score, python components called with
the row columns, remote components sent them, and reward models. Rules: test_reward_rules.py."""

import datetime
import json
import math
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rlhf_dist.config.schema import RewardComponent, RewardConfig
from rlhf_dist.errors import UserError
from rlhf_dist.rewards import (
    CompositeReward,
    RemoteReward,
    RewardError,
    RewardModel,
    load_python_function,
    register_rule,
    rules,
)
from rlhf_dist.rewards.functions import Binding, Extras


def composite(*components, **kwargs) -> CompositeReward:
    return CompositeReward(RewardConfig(components=list(components), **kwargs))


def rule(name, weight=1.0) -> RewardComponent:
    return RewardComponent(type="rule", name=name, weight=weight)


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


@pytest.fixture
def scratch_registry(monkeypatch):
    """Rules a test registers vanish when it ends."""
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))


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
        "SEEN = []  # the keyword arguments of each call, for the tests to read\n"
        "def correct(prompts, responses, answer):\n"
        "    SEEN.append({'answer': answer})\n"
        "    return [float(r.strip() == a) for r, a in zip(responses, answer)]\n"
        "def sees_all(prompts, responses, **columns):\n"
        "    SEEN.append(columns)\n"
        "    return [0.0] * len(responses)\n"
        "def takes_none(prompts, responses):\n"
        "    return [1.0] * len(responses)\n"
        "def renamed(p, r, *, tag='none', **rest):\n"
        "    SEEN.append({'tag': tag, **rest})\n"
        "    return [0.0] * len(r)\n"
        "def needs_label(prompts, responses, label, weight=1.0):\n"
        "    return [weight] * len(responses)\n"
        "def one_argument(texts):\n"
        "    return [0.0] * len(texts)\n"
        "def trl_accuracy(completions, answer, **kwargs):\n"
        "    SEEN.append({'completions': completions, 'answer': answer, **kwargs})\n"
        "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n"
        "def trl_kwargs_only(completions, **kwargs):\n"
        "    SEEN.append(dict(kwargs, completions=completions))\n"
        "    return [float(len(c)) for c in completions]\n"
        "def keywords_only(*, responses, level, prompts=None):\n"
        "    SEEN.append({'responses': responses, 'level': level, 'prompts': prompts})\n"
        "    return [float(x) for x in level]\n"
        "def with_step(completion_ids, trainer_state, /, **kwargs):\n"
        "    SEEN.append({'ids': completion_ids, 'step': trainer_state.global_step, 'kw': sorted(kwargs)})\n"
        "    return [float(len(i)) for i in completion_ids]\n"
        "def all_by_keyword(**kwargs):\n"
        "    SEEN.append(sorted(kwargs))\n"
        "    return [0.0] * len(kwargs['completions'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)  # each test imports its own copy
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


COLUMNS = {
    "answer": ["4", "5", "6"],
    "level": [1, 2, 3],
    "prompts": ["shadowed"] * 3,  # a column named like a positional argument is never passed
    "responses": ["shadowed"] * 3,
    "two words": ["x"] * 3,  # not an identifier: no keyword argument can carry it
    "1st": ["y"] * 3,
    "p": ["z"] * 3,
}


def python(user_module, function, **kwargs) -> RewardComponent:
    return RewardComponent(type="python", path=f"{user_module}:{function}", **kwargs)


def test_python_component_gets_the_columns_it_names(user_module):
    result = composite(python(user_module, "correct")).score(["q"] * 3, ["4", " 4 ", "6"], COLUMNS)
    assert result.total.tolist() == [1.0, 0.0, 1.0]  # right only where the label reached it
    assert sys.modules[user_module].SEEN == [{"answer": ["4", "5", "6"]}]


def test_python_component_with_kwargs_gets_every_identifier_column(user_module):
    composite(python(user_module, "sees_all")).score(["q"] * 3, ["a", "b", "c"], COLUMNS)
    assert sys.modules[user_module].SEEN == [{"answer": ["4", "5", "6"], "level": [1, 2, 3], "p": ["z"] * 3}]


def test_python_component_passes_no_column_into_its_positional_names(user_module):
    composite(python(user_module, "renamed")).score(["q"] * 3, ["a", "b", "c"], {**COLUMNS, "tag": [0, 1, 2]})
    assert sys.modules[user_module].SEEN == [{"tag": [0, 1, 2], "answer": ["4", "5", "6"], "level": [1, 2, 3]}]


def test_python_component_without_column_parameters_still_works(user_module):
    reward = composite(python(user_module, "takes_none"))
    assert reward.score(["q"] * 3, ["a", "b", "c"], COLUMNS).total.tolist() == [1.0] * 3
    assert reward.score(["q"], ["a"]).total.tolist() == [1.0]  # and with no columns at all


def test_python_component_missing_a_required_column_says_which(user_module):
    with pytest.raises(RewardError) as info:
        composite(python(user_module, "needs_label")).score(["q"], ["a"], {"answer": ["1"]})
    message = str(info.value)
    assert "'needs_label'" in message and "takes 'label'" in message and "(columns: answer)" in message
    assert "give it a default" in message
    with pytest.raises(UserError, match=r"one_argument.*must take \(prompts, responses, \*\*columns\).*TRL"):
        composite(python(user_module, "one_argument"))


# TRL's documented forms get the responses and the labels, never the prompts in their place.
def test_trl_style_reward_binds_completions_and_columns_by_name(user_module):
    result = composite(python(user_module, "trl_accuracy")).score(["q1", "q2", "q3"], ["4", "5 ", "x"], COLUMNS)
    assert result.total.tolist() == [1.0, 1.0, 0.0]
    seen = sys.modules[user_module].SEEN[0]
    assert seen["completions"] == ["4", "5 ", "x"] and seen["answer"] == ["4", "5", "6"]
    assert seen["prompts"] == ["q1", "q2", "q3"]  # TRL passes the prompts in **kwargs too
    assert seen["level"] == [1, 2, 3] and seen["p"] == ["z"] * 3  # and every other column
    assert seen["trainer_state"].global_step == 0 and "responses" not in seen


def test_trl_style_kwargs_only_reward_gets_the_responses(user_module):
    result = composite(python(user_module, "trl_kwargs_only")).score(["prompt one", "p2"], ["ab", "abcd"])
    assert result.total.tolist() == [2.0, 4.0]  # lengths of the responses, not of the prompts
    assert sys.modules[user_module].SEEN[0]["prompts"] == ["prompt one", "p2"]


def test_keyword_only_and_positional_only_rewards(user_module):
    reward = composite(python(user_module, "keywords_only"))
    assert reward.score(["q"] * 3, ["a", "b", "c"], COLUMNS).total.tolist() == [1.0, 2.0, 3.0]
    assert sys.modules[user_module].SEEN[-1] == {"responses": ["a", "b", "c"], "level": [1, 2, 3], "prompts": ["q"] * 3}
    extras = Extras(completion_ids=[[5, 6], [7]], step=12)
    result = composite(python(user_module, "with_step")).score(["q", "r"], ["a", "b"], {"answer": [1, 2]}, extras)
    assert result.total.tolist() == [2.0, 1.0]
    assert sys.modules[user_module].SEEN[-1] == {"ids": [[5, 6], [7]], "step": 12, "kw": ["answer", "completions", "prompts"]}


def test_kwargs_only_reward_gets_everything_by_keyword(user_module):
    composite(python(user_module, "all_by_keyword")).score(["q"], ["a"], {"answer": ["1"]})
    assert sys.modules[user_module].SEEN == [["answer", "completion_ids", "completions", "prompts", "trainer_state"]]


def test_binding_problem_names_the_parameter_and_the_columns(user_module):
    binding = Binding.of(load_python_function(f"{user_module}:trl_accuracy"), "reward.components.0.path")
    assert binding.problem(["answer", "level"]) is None
    message = binding.problem(["solution", "level"], "data.prompts")
    assert "takes 'answer'" in message and "data.prompts (columns: level, solution)" in message


def test_columns_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match=r"one value per sample \(2\).*'answer': 1"):
        composite(rule("letters")).score(["p", "p"], ["a", "b"], {"answer": ["1"]})


def test_gold_can_be_a_component_mapping(user_module):
    cfg = RewardConfig(components=[rule("letters")], gold={"type": "python", "path": f"{user_module}:correct"})
    result = CompositeReward(cfg).score(["q"] * 3, ["4", "aaa", "6"], COLUMNS)
    torch.testing.assert_close(result.gold, torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(result.total, torch.tensor([0.0, 1.0, 0.0]))  # the gold is not trained on
    assert set(result.components) == {"letters"}
    short = composite(rule("letters"), gold=f"{user_module}:correct")  # module:function alone means python
    torch.testing.assert_close(short.score(["q"] * 3, ["4", "aaa", "6"], COLUMNS).gold, result.gold)
    with pytest.raises(RewardError, match="reward component 'gold' .*returned shape"):
        composite(rule("letters"), gold={"type": "python", "path": f"{user_module}:too_short"}).score(["q"] * 2, ["a", "b"])


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
    """Answers per path: /columns (checks the answer column), /good (1 per char), /garbage, /short,
    /big, /flaky (two 503s, then an answer), anything else sleeps past the timeout."""

    hits: dict[str, int] = {}
    requests: list[dict] = []  # bodies POSTed to /columns

    def do_POST(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))  # strict: no NaN
        if self.path == "/columns":  # 1 where the response is the row's answer
            self.requests.append(request)
            answers = request["columns"].get("answer", [None] * len(request["responses"]))
            body = json.dumps({"rewards": [float(r == a) for r, a in zip(request["responses"], answers)]}).encode()
        elif self.path == "/good":
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


def test_remote_body_carries_the_columns(server):
    class Opaque:
        def __str__(self):
            return "opaque!"

    columns = {
        "answer": ["4", "5"],
        "when": [datetime.date(2024, 5, 1), None],  # not JSON: sent as str()
        "score": [math.nan, 1.5],  # strict JSON has no NaN: sent as "nan"
        "meta": [{"k": Opaque()}, [1, (2, 3)]],
        "vector": [torch.tensor([1, 2]), torch.tensor(3.5)],  # tensors and arrays as lists
    }
    reward = composite(RewardComponent(type="remote", name="judge", url=f"{server}/columns"))
    _Handler.requests.clear()
    result = reward.score(["p1", "p2"], ["4", "4"], columns)
    assert result.total.tolist() == [1.0, 0.0]
    assert _Handler.requests == [
        {
            "prompts": ["p1", "p2"],
            "responses": ["4", "4"],
            "columns": {
                "answer": ["4", "5"],
                "when": ["2024-05-01", None],
                "score": ["nan", 1.5],
                "meta": [{"k": "opaque!"}, [1, [2, 3]]],
                "vector": [[1, 2], 3.5],
            },
        }
    ]
    reward.score(["p"], ["r"])  # without columns: an empty object, same shape of body
    assert _Handler.requests[-1]["columns"] == {}


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


def test_remote_5xx_is_retried_with_the_configured_budget(server, caplog):
    flaky = RewardComponent(type="remote", url=f"{server}/flaky", name="judge")
    start = time.monotonic()
    result = RewardConfig(components=[flaky], retries=2, backoff_s=0.1)
    assert CompositeReward(result).score(["p"], ["r"]).total.tolist() == [7.0]
    assert time.monotonic() - start >= 0.1 + 0.2, "backoff 0.1 s, then 0.2 s"
    assert _Handler.hits["/flaky"] == 3
    waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for reward")]
    assert waits == [f"waiting for reward 'judge' (attempt {k}/3, 30 s): {server}/flaky answered HTTP 503 busy"
                     for k in (2, 3)]  # a line before each retry: a slow server is never silent for long
    with pytest.raises(RewardError, match="/flaky failed 2 time.*HTTP 503"):
        CompositeReward(RewardConfig(components=[flaky], retries=1, backoff_s=0.0)).score(["p"], ["r"])


def test_remote_connection_refused_is_reported():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as unused:
        port = unused.server_address[1]  # bound then closed: nothing listens there afterwards
    with pytest.raises(RewardError, match=f"127.0.0.1:{port} failed 1 time"):
        RemoteReward(f"http://127.0.0.1:{port}", timeout_s=1.0, retries=0)(["p"], ["r"])


def test_a_python_reward_past_the_timeout_fails_the_step_naming_it(tmp_path, monkeypatch):
    (tmp_path / "sleepy.py").write_text("import time\ndef slow(prompts, responses):\n    time.sleep(5)\n    return [0.0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = CompositeReward(RewardConfig(components=[RewardComponent(type="python", path="sleepy:slow")], timeout_s=0.3))
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        reward.score(["p"] * 3, ["r"] * 3)
    assert time.monotonic() - start < 2
    assert str(info.value) == ("python reward 'slow' (sleepy:slow) took more than reward.timeout_s=0.3 s on a batch of "
                               "3 samples; make it faster, or raise reward.timeout_s")


# ----------------------------------------------------------------------------- reward model


def test_reward_model_scores_match_an_unpadded_forward(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_dist.models.tiny import make_tiny

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
