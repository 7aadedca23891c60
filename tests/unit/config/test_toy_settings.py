"""The embedded default run as a user adapts it: which toy settings stay, said on one line."""

from rlhf_dist.config import load_config


def test_the_toy_settings_a_user_keeps_are_said_and_its_gold_goes_with_its_reward():
    from rlhf_dist.config import toy_settings_line

    assert toy_settings_line([]) is None and toy_settings_line(["steps=5", "learner.optimizer.lr=1e-4"]) is None
    assert toy_settings_line(["model.path=Qwen/Qwen2.5-0.5B"]) == (
        "note: the embedded default run: kept the toy's data.prompts=builtin:letters ('write letters: ...' prompts) "
        "and reward.components=[letters] and reward.gold=letters (the share of 'a' characters); override them for "
        "your task")
    own_reward = ["model.path=m", "data.prompts=p.jsonl", "reward.components=[{type: python, path: 'r:f'}]"]
    assert toy_settings_line(own_reward) == ("note: the embedded default run: the toy's reward.gold=letters went with "
                                             "its reward (set reward.gold to score a gold reward)")
    assert load_config(None, own_reward[2:]).reward.gold is None  # no letters gold on a user's reward
    assert load_config(None, [*own_reward[2:], "reward.gold=letters"]).reward.gold == "letters"
    assert load_config(None, []).reward.gold == "letters"  # the toy keeps its own
