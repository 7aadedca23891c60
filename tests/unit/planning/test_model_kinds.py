"""The right kind of model, or a refusal: config.json's architectures checked before Ray, and any
load that would initialise weights at random refused (a causal LM is no reward model)."""

import json
import shutil

import pytest

from rlhf_dist.errors import UserError
from rlhf_dist.models.loading import load_causal_lm
from rlhf_dist.planning.machine_checks import ModelRef, model_problems
from rlhf_dist.rewards.model import RewardModel


def with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return str(dst)


def test_a_causal_lm_as_reward_model_and_a_classifier_as_policy_are_named(tiny_model, tmp_path):
    policy, reward = str(tiny_model.policy), str(tiny_model.reward)
    two_labels = with_config(tiny_model.reward, tmp_path / "two", id2label={"0": "a", "1": "b"})
    problems = model_problems([
        ModelRef("reward.components.0.path", policy, kind="reward"),
        ModelRef("model.path", reward, kind="causal"),
        ModelRef("reference.path", reward, kind="causal"),
        ModelRef("reward.gold.path", two_labels, kind="reward"),
    ])
    assert problems == [
        f"reward.components.0.path {policy!r} holds a LlamaForCausalLM, a causal LM; a reward model must be an "
        "...ForSequenceClassification with num_labels=1, such as `rlhf-dist rm` writes (its model/ folder)",
        f"model.path {reward!r} holds a LlamaForSequenceClassification, a sequence classifier (a reward model); "
        "model.path needs a causal LM (an ...ForCausalLM architecture), such as the policy an SFT run writes",
        f"reference.path {reward!r} holds a LlamaForSequenceClassification, a sequence classifier (a reward model); "
        "reference.path needs a causal LM (an ...ForCausalLM architecture), such as the policy an SFT run writes",
        f"reward.gold.path {two_labels!r} holds a LlamaForSequenceClassification with num_labels=2; a reward model "
        "gives one score per sequence (num_labels=1), such as `rlhf-dist rm` writes",
    ]
    right = [ModelRef("m", policy, kind="causal"), ModelRef("r", reward, kind="reward"), ModelRef("x", policy)]
    assert model_problems(right) == []
    unknown = with_config(tiny_model.policy, tmp_path / "unknown", architectures=None)
    assert model_problems([ModelRef("r", unknown, kind="reward")]) == []  # nothing to go by: the load decides


def test_loads_that_would_initialise_weights_at_random_are_refused(tiny_model, tmp_path):
    # The config says causal LM, so only the load itself can tell: a reward head would be random.
    with pytest.raises(UserError, match=r"as a reward model .* would initialise 1 weight\(s\) at random \(score.weight\)"):
        RewardModel(str(tiny_model.policy))
    mislabelled = with_config(tiny_model.reward, tmp_path / "mislabelled", architectures=["LlamaForCausalLM"])
    with pytest.raises(UserError, match=r"as a causal LM would initialise 1 weight\(s\) at random \(lm_head.weight\)"):
        load_causal_lm(mislabelled)
    assert RewardModel(str(tiny_model.reward))(["p"], ["r"]).shape == (1,)
    assert load_causal_lm(tiny_model.policy) is not None
