"""The one data reader: JSONL, Parquet and saved `datasets` directories, and one clear line per bad file."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rlhf_dist.data import DataError, Table, read_table
from rlhf_dist.errors import UserError

ROWS = [
    {"prompt": "what is 2 + 3?", "answer": "5", "level": 1},
    {"prompt": "what is 4 + 4?", "answer": "8", "level": 2},
    {"prompt": "what is 1 + 0?", "answer": "1", "level": 1},
]
CHATS = [
    {"messages": [{"role": "user", "content": "say cat"}], "answer": "cat"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say dog"}], "answer": "dog"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert isinstance(exc, UserError) and "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------- every format


def test_jsonl_rows_and_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n\n" + json.dumps(ROWS[2]) + "\n")
    table = read_table(path)
    assert table.rows == ROWS and len(table) == 3 and list(table) == ROWS
    assert table.lines == [1, 2, 4]  # the blank line 3 is skipped, not renumbered
    assert table.where(2) == f"{path} line 4"
    assert table.columns == ["prompt", "answer", "level"]


def test_jsonl_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert read_table(path).rows == ROWS[:1]


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    full = [{"prompt": None, "answer": None, "level": None, "messages": None, **row} for row in ROWS + CHATS]
    pq.write_table(pa.Table.from_pylist(full), path)
    table = read_table(path)
    assert table.lines is None and table.where(0) == f"{path} row 1"
    assert table.rows == full  # nested chat lists come back as lists of dicts
    assert table.rows[4]["messages"] == CHATS[1]["messages"] and table.rows[4]["answer"] == "dog"


def test_saved_dataset_and_datasetdict_split(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "plain"))
    assert read_table(tmp_path / "plain").rows == ROWS
    assert read_table(tmp_path / "plain", split="ignored for a plain dataset").rows == ROWS

    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(CHATS)})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert read_table(tmp_path / "dict").rows == ROWS  # default split: train
    assert read_table(tmp_path / "dict", split="test").rows == CHATS
    with pytest.raises(DataError) as info:
        read_table(tmp_path / "dict", split="validation")
    assert "without a split 'validation'" in one_line(info.value) and "['train', 'test']" in str(info.value)
    assert "data.split" in str(info.value)


def test_explicit_format_overrides_the_name(tmp_path):
    path = write_jsonl(tmp_path / "rows.txt", ROWS)
    assert read_table(path, "jsonl").rows == ROWS
    with pytest.raises(DataError) as info:
        read_table(path)  # auto cannot tell .txt
    assert "cannot tell the format" in one_line(info.value) and "'rows.txt'" in str(info.value)
    with pytest.raises(DataError, match="or set data.format"):
        read_table(path, format_setting="data.format")
    with pytest.raises(DataError, match="is a file, which cannot be read as datasets"):
        read_table(path, "datasets")


def test_reading_writes_no_cache(tmp_path):
    """Loading Parquet and saved datasets leaves HOME (and so ~/.cache) untouched."""
    import datasets

    data = datasets.Dataset.from_list(ROWS)
    data.to_parquet(str(tmp_path / "rows.parquet"))
    data.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "dict"))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env["HOME"] = str(home)
    code = textwrap.dedent(f"""
        from rlhf_dist.data import read_table
        for name in ("rows.parquet", "saved", "dict"):
            assert len(read_table({str(tmp_path)!r} + "/" + name)) == 3
    """)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert [p.relative_to(home) for p in home.rglob("*")] == []
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(
        ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    )  # and nothing was added beside the data


# ----------------------------------------------------------------------------- bad files


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as info:
        read_table(tmp_path / "nope.parquet", setting="data.prompts")
    assert "data.prompts=" in one_line(info.value) and "nope.parquet' does not exist" in str(info.value)


def test_non_utf8_jsonl_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_table(path)
    message = one_line(info.value)
    assert "latin1.jsonl line 2: not UTF-8" in message and "0xe9" in message and "save the file as UTF-8" in message


@pytest.mark.parametrize(
    "content, fragments",
    [
        ('{"prompt": "ok"}\n{"prompt": "cut off\n', ["line 2", "not valid JSON", "cut off"]),
        ('{"prompt": "ok"}\n\n[1, 2]\n', ["line 3", "expected a JSON object, got list", "JSON Lines"]),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path, content, fragments):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_table(path)
    message = one_line(info.value)
    assert all(f in message for f in fragments), message


@pytest.mark.parametrize("content", [b"PAR1 this is not really parquet PAR1", b"", b"prompt,answer\n2+3,5\n"])
def test_corrupt_parquet(tmp_path, content):
    path = tmp_path / "broken.parquet"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_table(path)
    assert "broken.parquet is not a readable Parquet file" in one_line(info.value)


def test_directory_that_is_not_a_dataset(tmp_path):
    folder = tmp_path / "just_files"
    folder.mkdir()
    write_jsonl(folder / "rows.jsonl", ROWS)
    with pytest.raises(DataError) as info:
        read_table(folder)
    message = one_line(info.value)
    assert "just_files is a directory but not a saved dataset" in message and "save_to_disk" in message
    with pytest.raises(DataError, match="is a directory, which cannot be read as jsonl"):
        read_table(folder, "jsonl")


def test_damaged_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "saved" / "data-00000-of-00001.arrow").write_bytes(b"not arrow")
    with pytest.raises(DataError) as info:
        read_table(tmp_path / "saved")
    assert "cannot load the saved dataset" in one_line(info.value)


def test_empty_inputs(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    datasets.Dataset.from_dict({"prompt": []}).save_to_disk(str(tmp_path / "empty_ds"))
    for name in ("empty.jsonl", "blank.jsonl", "empty.parquet", "empty_ds"):
        with pytest.raises(DataError) as info:
            read_table(tmp_path / name, setting="data.prompts", what="prompts")
        assert f"{name} holds no prompts" in one_line(info.value) and "data.prompts" in str(info.value)


def test_missing_column_names_the_column_the_columns_and_the_key():
    table = Table(source="pairs.parquet", rows=[{"prompt": "a", "chosen": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError) as info:
        table.value(0, "rejected", "data.rejected_key", "the rejected response")
    assert one_line(info.value) == (
        "pairs.parquet has no column 'rejected' (data.rejected_key); its columns are ['prompt', 'chosen']; "
        "set data.rejected_key to the column holding the rejected response"
    )
    # A column that other rows have: the row is named instead.
    with pytest.raises(DataError, match=r"pairs.parquet row 2: no 'chosen' \(data.chosen_key\); this row has \['prompt'\]"):
        table.value(1, "chosen", "data.chosen_key", "the preferred response")
