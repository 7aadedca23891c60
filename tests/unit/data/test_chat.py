"""Chat prompts rendered with the tiny tokenizer's template: RL prompts and SFT/preference rows alike."""

import copy
import json

import pytest

from rlhf_dist.config.schema import DataConfig
from rlhf_dist.config.stages import StageDataConfig
from rlhf_dist.data import ChatRenderer, DataError, load_prompts
from rlhf_dist.errors import UserError
from rlhf_dist.models.tiny import CHAT_TEMPLATE, train_tokenizer
from rlhf_dist.stages.stage_data import preference_examples, sft_examples


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="module")
def bare_tokenizer(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    return bare


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- the tiny template


def test_tiny_template_round_trips(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    chat = [{"role": "system", "content": "be brief"}, user("write letters: cat"), {"role": "assistant", "content": "aaa 12"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert text == "<s><|system|>\nbe brief</s><|user|>\nwrite letters: cat</s><|assistant|>\naaa 12</s>"
    ids = encode(tokenizer, text)
    assert tokenizer.decode(ids) == text
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1  # one BOS, the template's
    assert ids.count(tokenizer.eos_token_id) == 3 and ids[-1] == tokenizer.eos_token_id


# ----------------------------------------------------------------------------- RL prompts


def test_chat_prompt_gets_the_generation_prompt_and_keeps_its_columns(tmp_path, tokenizer):
    rows = [
        {"messages": [user("say cat")], "answer": "cat", "meta": {"level": 2, "tags": ["a"]}},
        {"messages": [user("say dog")], "answer": "dog", "meta": {"level": 1, "tags": []}},
    ]
    prompts = load_prompts(DataConfig(prompts=write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer, seed=0).prompts
    first = prompts[0]
    assert first.text == "<s><|user|>\nsay cat</s><|assistant|>\n"
    assert first.ids == encode(tokenizer, first.text) and first.ids.count(tokenizer.bos_token_id) == 1
    assert [p.columns for p in prompts] == [{k: v for k, v in r.items() if k != "messages"} for r in rows]


def test_trl_conversational_prompts_are_chats_under_the_prompt_key(tmp_path, tokenizer):
    rows = [{"prompt": [user("say cat")], "answer": "cat"}]
    prompt = load_prompts(DataConfig(prompts=write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer, seed=0).prompts[0]
    assert prompt.text == "<s><|user|>\nsay cat</s><|assistant|>\n" and prompt.columns == {"answer": "cat"}


def test_a_chat_ending_with_an_assistant_turn_is_continued_as_a_prefill(tmp_path, tokenizer):
    rows = [{"messages": [user("say cat"), {"role": "assistant", "content": "cat cat"}]}]
    prompt = load_prompts(DataConfig(prompts=write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer, seed=0).prompts[0]
    assert prompt.text == "<s><|user|>\nsay cat</s><|assistant|>\ncat cat"  # no end of turn, no new assistant turn
    assert prompt.ids == encode(tokenizer, prompt.text)


def test_system_prompt_is_prepended_unless_the_chat_has_one(tmp_path, tokenizer):
    rows = [{"messages": [user("say cat")]}, {"messages": [{"role": "system", "content": "own"}, user("say dog")]}]
    cfg = DataConfig(prompts=write_jsonl(tmp_path / "p.jsonl", rows), system_prompt="be brief")
    texts = [p.text for p in load_prompts(cfg, tokenizer, seed=0).prompts]
    assert texts == [
        "<s><|system|>\nbe brief</s><|user|>\nsay cat</s><|assistant|>\n",
        "<s><|system|>\nown</s><|user|>\nsay dog</s><|assistant|>\n",
    ]


def test_apply_chat_template_wraps_text_prompts(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "say cat", "answer": "cat"}])
    plain = load_prompts(DataConfig(prompts=path), tokenizer, seed=0).prompts[0]
    assert plain.text == "say cat" and plain.ids == tokenizer("say cat")["input_ids"]  # today's behaviour
    wrapped = load_prompts(DataConfig(prompts=path, apply_chat_template=True), tokenizer, seed=0).prompts[0]
    assert wrapped.text == "<s><|user|>\nsay cat</s><|assistant|>\n"
    assert wrapped.ids == encode(tokenizer, wrapped.text)
    assert plain.columns == wrapped.columns == {"answer": "cat"}
    builtin = load_prompts(
        DataConfig(prompts="builtin:letters", num_builtin_prompts=3, apply_chat_template=True), tokenizer, seed=0
    ).prompts
    assert all(p.text.startswith("<s><|user|>\n") and p.text.endswith("<|assistant|>\n") for p in builtin)
    assert all(p.columns == {} for p in builtin)


def test_config_template_replaces_the_tokenizers(tmp_path, tokenizer):
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    path = write_jsonl(tmp_path / "p.jsonl", [{"messages": [user("say cat")]}])
    prompt = load_prompts(DataConfig(prompts=path, chat_template=template), tokenizer, seed=0).prompts[0]
    assert prompt.text == "[user] say cat\n[assistant]"
    assert prompt.ids == encode(tokenizer, prompt.text) and tokenizer.bos_token_id not in prompt.ids


def test_overlong_chat_keeps_its_end(tmp_path, tokenizer):
    long_chat = [user(" ".join(["banana cherry"] * 20))]
    rows = [{"messages": long_chat, "answer": "x"}, {"messages": [user("hi")], "answer": "y"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    full = encode(tokenizer, tokenizer.apply_chat_template(long_chat, tokenize=False, add_generation_prompt=True))
    assert len(full) > 40
    kept = load_prompts(DataConfig(prompts=path, max_prompt_tokens=24), tokenizer, seed=0)
    cut = kept.prompts[0]
    assert kept.num_truncated == 1 and cut.ids == full[-24:]
    assert cut.text.endswith("cherry</s><|assistant|>\n") and cut.text == tokenizer.decode(full[-24:])
    skipped = load_prompts(DataConfig(prompts=path, max_prompt_tokens=24, overlong="skip"), tokenizer, seed=0)
    assert skipped.num_skipped == 1 and [(p.index, p.columns) for p in skipped.prompts] == [(0, {"answer": "y"})]


def test_no_template_is_a_clear_error(tmp_path, bare_tokenizer):
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [user("say cat")]}])
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"prompt": "say cat", "response": "cat"}])
    attempts = [
        lambda: load_prompts(DataConfig(prompts=chats), bare_tokenizer, seed=0),
        lambda: load_prompts(DataConfig(prompts=texts, apply_chat_template=True), bare_tokenizer, seed=0),
        lambda: sft_examples([{"messages": [user("a"), {"role": "assistant", "content": "b"}]}],
                             bare_tokenizer, StageDataConfig(eval_fraction=0.0), seed=0),
        lambda: sft_examples([{"prompt": "a", "response": "b"}], bare_tokenizer,
                             StageDataConfig(eval_fraction=0.0, apply_chat_template=True), seed=0),
    ]
    for attempt in attempts:
        with pytest.raises(UserError) as info:
            attempt()
        message = str(info.value)
        assert "no chat template" in message and "set data.chat_template" in message and "\n" not in message
    # Text prompts need no template.
    assert load_prompts(DataConfig(prompts=texts), bare_tokenizer, seed=0).prompts[0].text == "say cat"


@pytest.mark.parametrize(
    "row, fragments",
    [
        ({"messages": "say cat"}, ["line 1", "'messages' (data.messages_key) must be a non-empty list"]),
        ({"messages": []}, ["line 1", "must be a non-empty list"]),
        ({"messages": [{"role": "user"}]}, ["message 0", "string 'role' and a string 'content'"]),
        ({"prompt": ["hi", "there"]}, ["message 0 of 'prompt' is 'hi'", "string 'role' and a string 'content'"]),
        ({"conversations": [{"from": "human", "value": "hi"}]}, ["ShareGPT from/value messages", "convert each turn"]),
        ({"question": "hi"}, ["no column 'prompt' (data.prompt_key) or 'messages' (data.messages_key)",
                              "['question']", "set data.prompt_key"]),
    ],
)
def test_bad_chat_rows(tmp_path, tokenizer, row, fragments):
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError) as info:
        load_prompts(DataConfig(prompts=path), tokenizer, seed=0)
    assert all(f in str(info.value) for f in fragments), str(info.value)


def test_a_template_that_raises_is_one_line(tokenizer):
    renderer = ChatRenderer(tokenizer, "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(DataError, match="p.jsonl line 4: the chat template failed on this chat: roles must alternate"):
        renderer.render([user("a")], add_generation_prompt=True, where="p.jsonl line 4")


# ----------------------------------------------------------------------------- SFT and preference rows


def test_sft_chat_rows_learn_the_last_assistant_turn(tokenizer):
    rows = [{"messages": [user("say a"), {"role": "assistant", "content": "aaa"}]}]
    example = sft_examples(rows, tokenizer, StageDataConfig(eval_fraction=0.0, system_prompt="be brief"), seed=0).train[0]
    assert tokenizer.decode(example.prompt_ids) == "<s><|system|>\nbe brief</s><|user|>\nsay a</s><|assistant|>\n"
    assert tokenizer.decode(example.response_ids) == "aaa</s>"  # the template's end of turn, once
    assert example.response_ids.count(tokenizer.eos_token_id) == 1
    with pytest.raises(DataError, match=r"data row 1: 'messages' must end with the assistant message.*\['user'\]"):
        sft_examples([{"messages": [user("say a")]}], tokenizer, StageDataConfig(eval_fraction=0.0), seed=0)


def test_sft_text_rows_with_apply_chat_template(tokenizer):
    rows = [{"prompt": "say a", "response": "aaa"}]
    cfg = StageDataConfig(eval_fraction=0.0, apply_chat_template=True)
    example = sft_examples(rows, tokenizer, cfg, seed=0).train[0]
    assert tokenizer.decode(example.prompt_ids) == "<s><|user|>\nsay a</s><|assistant|>\n"
    assert tokenizer.decode(example.response_ids) == "aaa</s>"


def test_preference_rows_with_chat_prompts(tokenizer):
    rows = [{"messages": [user("say a")], "chosen": "aaa", "rejected": "the dog"}]
    pair = preference_examples(rows, tokenizer, StageDataConfig(eval_fraction=0.0), seed=0).train[0]
    assert tokenizer.decode(pair.prompt_ids) == "<s><|user|>\nsay a</s><|assistant|>\n"
    assert tokenizer.decode(pair.chosen_ids) == "aaa</s>" and tokenizer.decode(pair.rejected_ids) == "the dog</s>"
    wrapped = preference_examples(
        [{"prompt": "say a", "chosen": "aaa", "rejected": "the dog"}], tokenizer,
        StageDataConfig(eval_fraction=0.0, apply_chat_template=True), seed=0,
    ).train[0]
    assert wrapped == pair


def test_a_reward_model_reads_a_chat_prompt_with_one_bos(tokenizer):
    from rlhf_dist.models.sequences import reward_input_ids

    chat = tokenizer.apply_chat_template([{"role": "user", "content": "1+2="}], add_generation_prompt=True,
                                         tokenize=False)
    for prompt in (chat, "write letters: cat"):
        ids = reward_input_ids(tokenizer, prompt, "3")
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id, (prompt, ids)
