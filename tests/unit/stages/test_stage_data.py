"""SFT and preference examples from the shared reader: tokenisation, templates, errors, over-long rows."""

import json

import pytest

from rlhf_dist.config.stages import StageDataConfig
from rlhf_dist.data import DataError
from rlhf_dist.models.tiny import train_tokenizer
from rlhf_dist.stages.stage_data import load_rows, preference_examples, read_rows, sft_examples


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_loss_covers_the_response_only(tokenizer):
    rows = [{"prompt": "write letters: cat", "response": "banana apple"}] * 4
    ex = sft_examples(rows, tokenizer, StageDataConfig(eval_fraction=0.25), seed=0)
    assert len(ex.train) == 3 and len(ex.eval) == 1
    first = ex.train[0]
    assert first.prompt_ids == tokenizer("write letters: cat").input_ids
    assert first.response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first.response_ids, skip_special_tokens=True) == "banana apple"


def test_chat_rows_use_the_configured_template(tokenizer):
    # The prompt's trailing space merges with the reply's first word ("Ġaaa"): the split falls
    # where the full chat stops agreeing with the prompt alone.
    template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    rows = [{"messages": [{"role": "user", "content": "say a"}, {"role": "assistant", "content": "aaa"}]}]
    ex = sft_examples(rows, tokenizer, StageDataConfig(eval_fraction=0.0, chat_template=template), seed=0)
    example = ex.train[0]
    assert tokenizer.decode(example.prompt_ids).endswith("assistant:")
    assert tokenizer.decode(example.response_ids, skip_special_tokens=True) == " aaa"
    assert example.response_ids[-1] == tokenizer.eos_token_id


def test_overlong_rows_truncate_or_skip_and_are_counted(tokenizer):
    long = " ".join(["banana"] * 60)
    rows = [{"prompt": "p", "chosen": long, "rejected": "a"}, {"prompt": "p", "chosen": "aa", "rejected": "b"}]
    truncated = preference_examples(rows, tokenizer, StageDataConfig(max_length=16, eval_fraction=0.0), seed=0)
    assert truncated.num_truncated == 1 and truncated.num_skipped == 0
    assert all(len(e.prompt_ids) + len(e.chosen_ids) <= 16 for e in truncated.train)
    skipped = preference_examples(rows, tokenizer, StageDataConfig(max_length=16, overlong="skip", eval_fraction=0.0), seed=0)
    assert skipped.num_skipped == 1 and len(skipped.train) == 1


def test_malformed_jsonl_line_is_reported_by_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "response": \n')
    with pytest.raises(DataError, match="bad.jsonl line 3: not valid JSON"):
        read_rows(path)


def test_missing_field_empty_file_and_missing_path(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"row 2: no 'chosen' \(data.chosen_key\); this row has \['prompt', 'rejected'\]"):
        preference_examples([{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "rejected": "c"}],
                            tokenizer, StageDataConfig(), seed=0)
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError) as info:
        sft_examples(read_rows(path), tokenizer, StageDataConfig(), seed=0)
    assert str(info.value) == (
        f"{path} has no column 'response' (data.response_key); its columns are ['prompt', 'answer']; "
        "set data.response_key to the column holding the response text"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no rows"):
        read_rows(empty)
    with pytest.raises(DataError, match="does not exist"):
        load_rows(StageDataConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="no data.path"):
        load_rows(StageDataConfig())


def test_every_format_through_the_config(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "chosen": "aa", "rejected": "b"} for i in range(5)]
    data = datasets.Dataset.from_list(rows)
    data.to_parquet(str(tmp_path / "pairs.parquet"))
    data.save_to_disk(str(tmp_path / "pairs_ds"))
    datasets.DatasetDict({"train": data.select(range(3)), "test": data.select(range(3, 5))}).save_to_disk(
        str(tmp_path / "pairs_dict")
    )
    write_jsonl(tmp_path / "pairs.txt", rows)
    assert load_rows(StageDataConfig(path=str(tmp_path / "pairs.parquet"))).rows == rows
    assert load_rows(StageDataConfig(path=str(tmp_path / "pairs_ds"))).rows == rows
    assert load_rows(StageDataConfig(path=str(tmp_path / "pairs_dict"))).rows == rows[:3]
    assert load_rows(StageDataConfig(path=str(tmp_path / "pairs_dict"), split="test")).rows == rows[3:]
    assert load_rows(StageDataConfig(path=str(tmp_path / "pairs.txt"), format="jsonl")).rows == rows
    with pytest.raises(DataError, match="or set data.format"):
        load_rows(StageDataConfig(path=str(tmp_path / "pairs.txt")))


def test_pairs_that_cannot_teach_are_dropped_and_counted_and_mostly_such_data_is_refused(tokenizer):
    good = [{"prompt": f"q{i}", "chosen": "aaa", "rejected": "bbb"} for i in range(6)]
    same = {"prompt": "q", "chosen": "same", "rejected": "same"}
    empty = {"prompt": "q", "chosen": "aaa", "rejected": " "}
    ex = preference_examples(good + [same, empty], tokenizer, StageDataConfig(eval_fraction=0.0), seed=0)
    assert len(ex.train) == 6 and ex.dropped == {"chosen == rejected": 1, "an empty chosen or rejected": 1}
    swapped = [{"prompt": f"q{i}", "chosen": "aaa", "rejected": "aaa"} for i in range(3)] + good[:2] + [empty]
    with pytest.raises(DataError, match=r"4 of 6 preference pairs in pairs.jsonl cannot teach a preference \(3 with "
                                        r"chosen == rejected, 1 with an empty chosen or rejected\); check data.chosen_key"):
        preference_examples(swapped, tokenizer, StageDataConfig(path="pairs.jsonl"), seed=0)


def test_data_that_makes_no_optimizer_step_names_the_numbers(tokenizer):
    from rlhf_dist.config.stages import StageConfig

    rows = [{"prompt": f"q{i}", "response": "aaa"} for i in range(20)]
    cfg = StageConfig(name="sft", data={"eval_fraction": 0.25}, learner={"mini_batch_size": 16, "micro_batch_size": 8})
    ex = sft_examples(rows, tokenizer, cfg.data, seed=0)
    assert ex.teaching_problem("sft", cfg) == (
        "sft: 15 training examples after holding out 5 for eval (data.eval_fraction=0.25) make no whole mini-batch of "
        "learner.mini_batch_size=16, so no optimizer step would be taken; add data, or lower learner.mini_batch_size "
        "(a multiple of learner.num_workers x learner.micro_batch_size)")
    enough = sft_examples(rows * 2, tokenizer, cfg.data, seed=0)
    assert enough.teaching_problem("sft", cfg) is None
