"""RL prompts: builtin tasks, every file format, errors, columns, over-long policies, the resumable sampler."""

import json
from collections import Counter

import pytest

from rlhf_dist.config.schema import DataConfig
from rlhf_dist.data import DataError, PromptSampler, builtin_prompts, load_prompts
from rlhf_dist.errors import UserError
from rlhf_dist.models.tiny import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ----------------------------------------------------------------------------- builtin


def test_builtin_prompts_are_deterministic_per_seed():
    a, b, c = builtin_prompts("letters", 50, 0), builtin_prompts("letters", 50, 0), builtin_prompts("letters", 50, 1)
    assert a == b and a != c
    assert len(a) == 50 and len(set(a)) > 40
    for text in a:
        instruction, words = text.split(":")
        assert instruction in {"write letters", "write words", "say letters", "repeat"}
        assert 2 <= len(words.split()) <= 6


def test_unknown_builtin_task_lists_the_tasks():
    with pytest.raises(UserError, match="unknown builtin task 'leters'.*builtin:letters"):
        builtin_prompts("leters", 10, 0)


def test_load_builtin_prompts(tokenizer):
    prompts = load_prompts(DataConfig(prompts="builtin:letters", num_builtin_prompts=20), tokenizer, seed=3)
    assert len(prompts) == 20 and prompts.num_truncated == prompts.num_skipped == 0
    assert [p.text for p in prompts.prompts] == builtin_prompts("letters", 20, 3)
    assert [p.index for p in prompts.prompts] == list(range(20))
    first = prompts.prompts[0]
    assert first.ids[0] == tokenizer.bos_token_id  # special tokens included
    assert tokenizer.decode(first.ids, skip_special_tokens=True) == first.text


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_happy_path(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "say cat", "id": 1}, "", {"question": "write dog"}])
    prompts = load_prompts(DataConfig(prompts=path, prompt_key="question"), tokenizer, seed=0)
    assert [p.text for p in prompts.prompts] == ["say cat", "write dog"]  # the blank line is ignored
    assert [p.columns for p in prompts.prompts] == [{"id": 1}, {}]  # the rest of each row travels with it
    assert prompts.prompts[1].ids == tokenizer("write dog")["input_ids"]


@pytest.mark.parametrize(
    "rows, fragments",
    [
        ([], ["holds no prompts"]),
        (["", "  "], ["holds no prompts"]),
        ([{"prompt": "ok"}, '{"prompt": "broken"', {"prompt": "ok"}], ["line 2", "not valid JSON", "broken"]),
        ([{"prompt": "ok"}, {"prompt": "ok"}, {"text": "x", "id": 3}], ["line 3", "no 'prompt' (data.prompt_key)", "['id', 'text']"]),
        ([{"prompt": "ok"}, [1, 2]], ["line 2", "expected a JSON object, got list"]),
        ([{"prompt": 5}], ["line 1", "'prompt' is a int"]),
    ],
)
def test_jsonl_errors_give_the_line(tmp_path, tokenizer, rows, fragments):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_prompts(DataConfig(prompts=path), tokenizer, seed=0)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file_and_unsupported_format(tmp_path, tokenizer):
    with pytest.raises(DataError, match="data.prompts=.*nope.jsonl' does not exist"):
        load_prompts(DataConfig(prompts=str(tmp_path / "nope.jsonl")), tokenizer, seed=0)
    (tmp_path / "p.csv").write_text("prompt\nsay cat\n")
    with pytest.raises(DataError, match="cannot tell the format from the name 'p.csv'"):
        load_prompts(DataConfig(prompts=str(tmp_path / "p.csv")), tokenizer, seed=0)


# ----------------------------------------------------------------------------- Parquet, datasets, columns


ROWS = [{"question": f"what is {i} + 1?", "answer": str(i + 1), "tags": ["sum", str(i)]} for i in range(4)]


def test_parquet_prompts_keep_their_columns(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "p.parquet")
    prompts = load_prompts(DataConfig(prompts=str(tmp_path / "p.parquet"), prompt_key="question"), tokenizer, seed=0)
    assert [p.text for p in prompts.prompts] == [r["question"] for r in ROWS]
    assert [p.columns for p in prompts.prompts] == [{"answer": r["answer"], "tags": r["tags"]} for r in ROWS]
    assert prompts.prompts[2].ids == tokenizer(ROWS[2]["question"])["input_ids"]


def test_saved_datasetdict_split_and_source_override(tmp_path, tokenizer):
    import datasets

    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:3]), "test": datasets.Dataset.from_list(ROWS[3:])}
    )
    splits.save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(prompts=str(tmp_path / "ds"), prompt_key="question")
    assert [p.columns["answer"] for p in load_prompts(cfg, tokenizer, seed=0).prompts] == ["1", "2", "3"]
    test = load_prompts(cfg.model_copy(update={"split": "test"}), tokenizer, seed=0).prompts
    assert [(p.text, p.columns["answer"]) for p in test] == [("what is 3 + 1?", "4")]
    # Another section (eval) loads its own file with the same rules; its key names it in errors.
    path = write_jsonl(tmp_path / "eval.jsonl", [{"question": "say cat", "answer": "cat"}])
    other = load_prompts(cfg, tokenizer, seed=0, source=path).prompts
    assert [(p.text, p.columns) for p in other] == [("say cat", {"answer": "cat"})]
    with pytest.raises(DataError, match="eval.prompts="):
        load_prompts(cfg, tokenizer, seed=0, source=str(tmp_path / "nope.jsonl"), setting="eval.prompts")


# ----------------------------------------------------------------------------- over-long prompts


@pytest.fixture
def mixed_lengths(tmp_path, tokenizer):
    long_text = " ".join(["banana cherry"] * 20)
    assert len(tokenizer(long_text)["input_ids"]) > 10
    rows = [{"prompt": "say cat"}, {"prompt": long_text}, {"prompt": "a dog"}, {"prompt": long_text + " sun"}]
    return write_jsonl(tmp_path / "p.jsonl", rows), long_text


def test_overlong_truncate_keeps_the_first_tokens(mixed_lengths, tokenizer):
    path, long_text = mixed_lengths
    prompts = load_prompts(DataConfig(prompts=path, max_prompt_tokens=10, overlong="truncate"), tokenizer, seed=0)
    assert (len(prompts), prompts.num_truncated, prompts.num_skipped) == (4, 2, 0)
    cut = prompts.prompts[1]
    assert cut.ids == tokenizer(long_text)["input_ids"][:10]
    assert long_text.startswith(cut.text) and cut.text
    assert all(len(p.ids) <= 10 for p in prompts.prompts)


def test_overlong_skip_drops_and_reindexes(mixed_lengths, tokenizer):
    path, _ = mixed_lengths
    prompts = load_prompts(DataConfig(prompts=path, max_prompt_tokens=10, overlong="skip"), tokenizer, seed=0)
    assert (len(prompts), prompts.num_truncated, prompts.num_skipped) == (2, 0, 2)
    assert [(p.index, p.text) for p in prompts.prompts] == [(0, "say cat"), (1, "a dog")]


def test_everything_skipped_is_an_error(mixed_lengths, tokenizer):
    path, _ = mixed_lengths
    with pytest.raises(DataError, match="all 4 prompts.*max_prompt_tokens=1 "):
        load_prompts(DataConfig(prompts=path, max_prompt_tokens=1, overlong="skip"), tokenizer, seed=0)


# ----------------------------------------------------------------------------- sampler


def test_sampler_covers_every_index_once_per_epoch():
    sampler = PromptSampler(10, seed=0, shuffle=True)
    first = sampler.next_batch(4) + sampler.next_batch(6)
    second = sampler.next_batch(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second and first != list(range(10))  # shuffled, differently per epoch
    assert (sampler.epoch, sampler.cursor, sampler.consumed) == (1, 10, 20)


def test_sampler_batches_straddle_epochs():
    sampler = PromptSampler(5, seed=1, shuffle=True)
    batches = [sampler.next_batch(3) for _ in range(5)]  # 15 indices = exactly 3 epochs
    by_epoch = PromptSampler(5, seed=1, shuffle=True)
    epochs = [by_epoch.next_batch(5) for _ in range(3)]
    # batch 1 = the last 2 of epoch 0 + the first 1 of epoch 1, and so on
    assert batches[1] == epochs[0][3:] + epochs[1][:1]
    assert [i for b in batches for i in b] == [i for e in epochs for i in e]
    assert all(sorted(e) == list(range(5)) for e in epochs) and len({tuple(e) for e in epochs}) == 3
    big = PromptSampler(3, seed=0).next_batch(7)  # a batch longer than the whole dataset
    assert sorted(Counter(big).values()) == [2, 2, 3]


def test_unshuffled_sampler_walks_in_order():
    sampler = PromptSampler(4, seed=0, shuffle=False)
    assert sampler.next_batch(3) + sampler.next_batch(3) == [0, 1, 2, 3, 0, 1]


def test_restored_sampler_continues_exactly(tmp_path):
    original = PromptSampler(7, seed=5, shuffle=True)
    for _ in range(3):
        original.next_batch(3)  # 9 indices: mid-way through epoch 1
    state = json.loads(json.dumps(original.state_dict()))  # survives a JSON checkpoint
    restored = PromptSampler(7, seed=5, shuffle=True)
    restored.load_state_dict(state)
    assert restored.consumed == 9
    assert [restored.next_batch(4) for _ in range(5)] == [original.next_batch(4) for _ in range(5)]
    assert restored.state_dict() == original.state_dict()


def test_restoring_into_a_different_dataset_is_refused():
    state = PromptSampler(7, seed=5).state_dict()
    with pytest.raises(DataError, match="num_prompts, seed, shuffle"):
        PromptSampler(8, seed=5).load_state_dict(state)


def test_empty_prompts_are_dropped_and_counted_and_mostly_empty_data_is_refused(tmp_path, tokenizer):
    rows = [{"prompt": "say cat"}, {"prompt": "  "}, {"prompt": "a dog"}, {"prompt": "sun"}, {"messages": [{"role": "user", "content": ""}]}]
    prompts = load_prompts(DataConfig(prompts=write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer, seed=0)
    assert [p.text for p in prompts.prompts] == ["say cat", "a dog", "sun"] and prompts.num_empty == 2
    assert prompts.report() == f"2 of 5 prompts of {tmp_path / 'p.jsonl'} were empty and were dropped"
    wrong_key = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "", "question": "say cat"}] * 3 + [{"prompt": "x"}])
    with pytest.raises(DataError, match=r"3 of 4 prompts of .*q.jsonl \(data.prompts\) are empty; check data.prompt_key='prompt'"):
        load_prompts(DataConfig(prompts=wrong_key), tokenizer, seed=0)


def test_every_cut_prompt_is_counted_in_one_line(tmp_path, tokenizer):
    long_text = " ".join(["banana cherry"] * 20)
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": long_text}] * 3 + [{"prompt": "cat"}])
    prompts = load_prompts(DataConfig(prompts=path, max_prompt_tokens=8), tokenizer, seed=0)
    assert prompts.report() == (f"3 of 4 prompts of {path} were longer than data.max_prompt_tokens=8 and were cut to "
                                "it (a text prompt keeps its first tokens, a chat prompt its last)")
    assert load_prompts(DataConfig(prompts=path), tokenizer, seed=0).report() is None
