"""Rules: the registry, the toy rules, the verifiable rules (math, exact_match, format), their args
checks in config validation, and the answer extraction and comparison behind `math`."""

from fractions import Fraction

import pytest
import torch

from rlhf_dist.config import ConfigError, dump_config, load_config
from rlhf_dist.config.schema import RewardComponent, RewardConfig
from rlhf_dist.errors import UserError
from rlhf_dist.rewards import CompositeReward, RewardError, get_rule, math_answer, register_rule, rule_names, rules
from rlhf_dist.rewards.math_answer import answers_match, extract_answer, parse_number, reference_answer


def rule(name, weight=1.0, **args) -> RewardComponent:
    return RewardComponent(type="rule", name=name, weight=weight, args=args)


def scores(component: RewardComponent, responses, **columns) -> list[float]:
    reward = CompositeReward(RewardConfig(components=[component]))
    return reward.score(["p"] * len(responses), responses, columns).components[component.name].tolist()


@pytest.fixture
def scratch_registry(monkeypatch):
    """Rules a test registers vanish when it ends."""
    monkeypatch.setattr(rules, "_RULES", dict(rules._RULES))


@pytest.fixture(params=["fallback", "math-verify"])
def backend(request, monkeypatch):
    """Runs a test without math-verify, and again with it where it is installed."""
    if request.param == "fallback":
        monkeypatch.setattr(math_answer, "_math_verify", lambda: None)
    else:
        pytest.importorskip("math_verify")
    return request.param


# ----------------------------------------------------------------------------- toy rules, registry


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
    assert {"letters", "length", "math", "exact_match", "format"} <= set(rule_names())

    @register_rule("test_const_two")
    def two(prompt: str, response: str) -> float:
        return 2.0

    assert get_rule("test_const_two") is two
    with pytest.raises(ValueError, match="already registered"):
        register_rule("letters")(lambda p, r: 0.0)
    with pytest.raises(TypeError, match=r"must take \(prompt, response\[, row\]\)"):
        register_rule("test_one_arg")(lambda response: 0.0)


def test_unknown_rule_suggests_a_name_and_lists_the_registry():
    with pytest.raises(UserError) as info:
        get_rule("leters")
    message = str(info.value)
    assert "'leters'" in message and "did you mean 'letters'?" in message and "length" in message


def test_a_registered_rule_sees_its_row_and_its_args(scratch_registry):
    @register_rule("test_label_times")
    def label_times(prompt: str, response: str, row: dict, *, factor: float = 1.0) -> float:
        return factor * row["label"] + len(prompt)

    component = rule("test_label_times", factor=10)
    reward = CompositeReward(RewardConfig(components=[component]))
    result = reward.score(["", "pp"], ["r", "r"], {"label": [1, 2]})
    assert result.total.tolist() == [10.0, 22.0]  # 10 * 1 + 0, 10 * 2 + 2: row i went to sample i


# ----------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    "response, answer",
    [
        ("Half of 84 is 42.\n#### 42", "42"),  # GSM8K marker
        ("#### 42 apples", 42),  # words after the marker; an int column
        ("so the answer is \\boxed{42}.", "#### 42"),  # boxed; the column in GSM8K form
        ("\\boxed{\\frac{3}{4}}", "3/4"),  # LaTeX fraction against a/b
        ("\\boxed{0.75}", "3/4"),  # decimal against a/b
        ("We get 3/4.", "0.75"),
        ("It costs $1,234 in total.", "1,234"),  # thousands commas on both sides
        ("1234", "1,234"),
        ("The total is 1,234.50", "1234.5"),  # decimals compare as numbers
        ("First 12, then 3 + 4 = 7", "7"),  # the last number wins
        ("The temperature fell to -5 degrees", "-5"),  # negative
        ("10-3 = 7", "7"),  # a minus between numbers is subtraction, not a sign
        ("x = 2.5", 2.5),  # a float column
        ("The answer is 50%", "50"),
        ("\\boxed{x = 5}", "5"),
        ("Natalia sold 24 clips in May.\n#### 72", "She sold 48/2 = <<48/2=24>>24 clips.\n#### 72"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),  # not a number: equal expressions
    ],
)
def test_math_rule_accepts_every_documented_form(backend, response, answer):
    assert scores(rule("math"), [response], answer=[answer]) == [1.0]


@pytest.mark.parametrize(
    "response, answer",
    [
        ("#### 43", "42"),  # wrong
        ("I think it is 42, no wait, 41", "42"),  # the last number is the answer
        ("\\boxed{41} although 42 appears later", "42"),  # boxed beats the last number
        ("#### 7\nCheck: 42", "42"),  # the marker beats everything after it
        ("no number at all", "42"),
        ("", "42"),
        ("0.333", "1/3"),  # exact: a rounded decimal is not the fraction
        ("-42", "42"),
        ("1,234", "1.234"),
        ("12345", "1,234"),
    ],
)
def test_math_rule_scores_wrong_or_missing_answers_zero(backend, response, answer):
    assert scores(rule("math"), [response], answer=[answer]) == [0.0]


def test_math_rule_reads_the_configured_answer_column():
    component = rule("math", answer_key="solution")
    got = scores(component, ["#### 3", "#### 3"], solution=["#### 3", "#### 4"], answer=["4", "3"])
    assert got == [1.0, 0.0]


def test_math_compares_equal_expressions_with_math_verify():
    pytest.importorskip("math_verify")
    assert answers_match("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")
    assert not answers_match("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{2}}{2}")


def test_math_without_math_verify_compares_expressions_as_normalised_text(monkeypatch):
    monkeypatch.setattr(math_answer, "_math_verify", lambda: None)
    assert answers_match("$\\dfrac{\\sqrt{2}}{2}$", "\\frac{\\sqrt{2}} {2}")
    assert not answers_match("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", Fraction(42)),
        ("-3", Fraction(-3)),
        ("\u22127", Fraction(-7)),  # Unicode minus
        ("1,234,567", Fraction(1234567)),
        ("2.50", Fraction(5, 2)),
        ("3/4", Fraction(3, 4)),
        ("-\\dfrac{3}{4}", Fraction(-3, 4)),
        ("\\$12.", Fraction(12)),
        ("5 \\text{ cm}", Fraction(5)),
        ("1e3", Fraction(1000)),
        ("1/0", None),
        ("1,23", None),  # not a thousands group
        ("\\sqrt{2}", None),
        ("forty-two", None),
        ("", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_extract_and_reference_answer():
    assert extract_answer("#### \\sqrt{2}") == "\\sqrt{2}"  # LaTeX after the marker is kept whole
    assert extract_answer("\\boxed{\\frac{1}{2}} and \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert extract_answer("unclosed \\boxed{42 ... 7") == "7"
    assert extract_answer("H2O and x2") is None  # digits inside words are not numbers
    assert reference_answer("The answer is \\boxed{12}") == "12"
    assert reference_answer("  1,234 ") == "1,234"


# ----------------------------------------------------------------------------- exact_match, format


def test_exact_match_strips_but_is_otherwise_exact():
    responses = ["  Paris\n", "paris", "Paris, France", "42"]
    assert scores(rule("exact_match"), responses, answer=["Paris ", "Paris", "Paris", 42]) == [1.0, 0.0, 0.0, 1.0]


def test_format_rule_searches_or_full_matches():
    responses = ["<think>hm</think> 4", "4 <think>x</think>", "no tags", "<think>a\nb</think>"]
    assert scores(rule("format", pattern="<think>.*</think>"), responses) == [1.0, 1.0, 0.0, 0.0]
    assert scores(rule("format", pattern="^<think>.*</think>"), responses) == [1.0, 0.0, 0.0, 0.0]
    assert scores(rule("format", pattern="(?s)<think>.*</think>", full_match=True), responses) == [0.0, 0.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- errors


def test_missing_answer_column_names_rule_key_columns_and_fix():
    with pytest.raises(RewardError) as info:
        scores(rule("math"), ["#### 1"], question=["q"], label=["1"])
    message = str(info.value)
    for fragment in ["'math'", "'answer'", "label, question", "args.answer_key"]:
        assert fragment in message, (fragment, message)
    with pytest.raises(RewardError, match="'exact_match'.*'gold'.*none"):
        scores(rule("exact_match", answer_key="gold"), ["x"])


def test_null_answer_names_the_sample():
    with pytest.raises(RewardError, match=r"sample 1: reward rule 'math': this row's 'answer' is null"):
        scores(rule("math"), ["#### 1", "#### 2"], answer=["1", None])


def problems(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return "\n".join(info.value.problems)


def components(text: str) -> str:
    return f"reward.components=[{text}]"


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (
            [components("{type: rule, name: maths}")],
            ["reward.components.0", "unknown reward rule 'maths'", "did you mean 'math'"],
        ),
        (
            [components("{type: rule, name: format, args: {pattern: '(unclosed'}}")],
            ["'(unclosed'", "not a valid regular expression"],
        ),
        (
            [components("{type: rule, name: format}")],
            ["'format' needs args.pattern", "pattern (str, required)", "full_match (bool, default False)"],
        ),
        (
            [components("{type: rule, name: math, args: {answer_col: x}}")],
            ["no setting args.answer_col", "did you mean 'answer_key'", "answer_key (str, default 'answer')"],
        ),
        ([components("{type: rule, name: math, args: {answer_key: 3}}")], ["args.answer_key must be a str, got 3"]),
        ([components("{type: rule, name: format, args: {pattern: x, full_match: 1}}")], ["must be a bool, got 1"]),
        ([components("{type: rule, name: letters, args: {x: 1}}")], ["'letters' has no setting args.x", "no args"]),
        ([components("{type: python, path: 'm:f', args: {x: 1}}")], ["only type 'rule' takes them"]),
        (["reward.gold=lettrs"], ["reward.gold: unknown reward rule 'lettrs'"]),
        (["reward.gold={type: rule, name: format, args: {pattern: '['}}"], ["reward.gold:", "not a valid regular"]),
        (["reward.gold={type: remote, url: 'ftp://x'}"], ["reward.gold: type 'remote' needs url as http://"]),
    ],
)
def test_bad_rule_config_is_a_config_error_before_any_actor(overrides, fragments):
    message = problems(*overrides)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_good_rule_config_validates_builds_and_round_trips(tmp_path):
    cfg = load_config(
        None,
        [
            "reward.components=[{type: rule, name: format, args: {pattern: '^#', full_match: false}, weight: 0.1}]",
            "reward.gold={type: rule, name: math, args: {answer_key: label}}",
        ],
    )
    result = CompositeReward(cfg.reward).score(["p", "p"], ["#### 5", "5"], {"label": ["5", "6"]})
    torch.testing.assert_close(result.total, torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(result.gold, torch.tensor([1.0, 0.0]))
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_config(cfg))
    assert load_config(saved).reward == cfg.reward  # `config show` output loads back unchanged


def test_importing_rewards_loads_no_distributed_stack_and_config_checks_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, rlhf_dist.config, rlhf_dist.rewards; print('torch' in sys.modules);"
        "from rlhf_dist.rewards import CompositeReward, RewardModel;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm', 'deepspeed', 'math_verify'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch_for_config, heavy = out.stdout.split("\n")[:2]
    assert torch_for_config == "False", "validating a config should not wait for torch to import"
    assert heavy == "[]", f"rlhf_dist.rewards pulled in: {heavy}"
