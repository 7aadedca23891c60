"""TRL's dataset layouts, and Anthropic-HH, read as they are: each gives the same examples as the
same data in our own layout, and a layout we do not take is named."""

import pytest

from rlhf_dist.config.stages import StageDataConfig
from rlhf_dist.data import DataError
from rlhf_dist.models.tiny import train_tokenizer
from rlhf_dist.stages.stage_data import preference_examples, sft_examples

CFG = StageDataConfig(eval_fraction=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def same(a, b):
    return [vars(x) for x in a.train] == [vars(x) for x in b.train]


def test_trl_sft_layouts_match_ours(tokenizer):
    ours = sft_examples([{"prompt": "say cat", "response": "cat cat"}], tokenizer, CFG, seed=0)
    trl = sft_examples([{"prompt": "say cat", "completion": "cat cat"}], tokenizer, CFG, seed=0)
    assert same(ours, trl) and trl.layout == "TRL prompt-completion (prompt, completion)"
    chat = sft_examples([{"messages": [user("say cat"), assistant("cat cat")]}], tokenizer, CFG, seed=0)
    trl_chat = sft_examples([{"prompt": [user("say cat")], "completion": [assistant("cat cat")]}], tokenizer, CFG, seed=0)
    assert same(chat, trl_chat) and chat.layout == "chats (messages): the last, assistant message is learnt"
    text = sft_examples([{"text": "cat cat dog"}], tokenizer, CFG, seed=0)
    first = text.train[0]
    assert first.prompt_ids == tokenizer("").input_ids and first.response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first.response_ids, skip_special_tokens=True) == "cat cat dog"
    assert text.layout == "TRL language modelling (text): the whole text is learnt"


def test_trl_preference_layouts_match_ours(tokenizer):
    ours = preference_examples([{"messages": [user("say cat")], "chosen": "cat", "rejected": "dog"}], tokenizer, CFG, seed=0)
    explicit = preference_examples(
        [{"prompt": [user("say cat")], "chosen": [assistant("cat")], "rejected": [assistant("dog")]}], tokenizer, CFG, seed=0)
    implicit = preference_examples(
        [{"chosen": [user("say cat"), assistant("cat")], "rejected": [user("say cat"), assistant("dog")]}], tokenizer, CFG, seed=0)
    assert same(ours, explicit) and same(ours, implicit)
    assert explicit.layout == "preferences with an explicit prompt (prompt, chosen, rejected)"
    assert implicit.layout.startswith("TRL preferences with an implicit prompt")


def test_anthropic_hh_strings_split_at_the_last_assistant_turn(tokenizer):
    talk = "\n\nHuman: say cat\n\nAssistant: ok\n\nHuman: again\n\nAssistant:"
    hh = preference_examples([{"chosen": talk + " cat", "rejected": talk + " dog"}], tokenizer, CFG, seed=0)
    ours = preference_examples([{"prompt": talk, "chosen": " cat", "rejected": " dog"}], tokenizer, CFG, seed=0)
    assert same(hh, ours) and hh.layout.startswith("Anthropic-HH strings")
    with pytest.raises(DataError, match="share the conversation up to the last"):
        preference_examples([{"chosen": talk + " cat", "rejected": "\n\nHuman: other\n\nAssistant: dog"}], tokenizer, CFG, seed=0)


def test_layouts_we_do_not_take_are_named(tokenizer):
    sharegpt = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    with pytest.raises(DataError, match="ShareGPT from/value messages .* are not supported; convert each turn"):
        sft_examples(sharegpt, tokenizer, CFG, seed=0)
    with pytest.raises(DataError, match=r"holds no SFT layout we take: its columns are \['question', 'answer'\]"):
        sft_examples([{"question": "q", "answer": "a"}], tokenizer, CFG, seed=0)
    with pytest.raises(DataError, match="but no prompt: no 'prompt' .* neither chats nor Anthropic-HH"):
        preference_examples([{"chosen": "a", "rejected": "b"}], tokenizer, CFG, seed=0)
