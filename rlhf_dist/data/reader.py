"""One reader for every data file: RL prompts, SFT demonstrations, preference pairs, eval prompts.

:func:`read_table` reads JSONL, Parquet, or a Hugging Face `datasets` directory saved with
``save_to_disk`` into a :class:`Table` of plain Python rows. A file it cannot read is a
:class:`DataError` of one line: which file, what is wrong with it, and how to fix it.

It writes nothing. Parquet is read with pyarrow directly and a saved dataset is loaded into
memory, so no cache appears under ~/.cache (``datasets.Dataset.from_parquet`` would write one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_dist.errors import UserError

FORMATS = ("jsonl", "parquet", "datasets")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_KINDS = "a .jsonl or .parquet file, or a directory written by `datasets`' save_to_disk"


class DataError(UserError):
    """Data (prompts, demonstrations, pairs) that cannot be read or used as configured."""


@dataclass
class Table:
    """The rows of one data file, and where each row came from (for error messages)."""

    source: str  # the path as configured, or a short description of in-memory rows
    rows: list[dict[str, Any]]
    lines: list[int] | None = None  # JSONL: the 1-based line of each row (blank lines are skipped)
    _columns: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    @property
    def columns(self) -> list[str]:
        """Every key of any row, in order of first appearance."""
        if self._columns is None:
            self._columns = list(dict.fromkeys(key for row in self.rows for key in row))
        return self._columns

    def where(self, i: int) -> str:
        """``p.jsonl line 7`` or ``p.parquet row 7``: how a message names row ``i``."""
        return f"{self.source} line {self.lines[i]}" if self.lines is not None else f"{self.source} row {i + 1}"

    def value(self, i: int, key: str, setting: str, holds: str) -> Any:
        """Row ``i``'s ``key``; a missing one names the column, the columns there are, and ``setting``.

        ``setting`` is the config key that names the column (``data.prompt_key``), ``holds`` what
        the column should hold (``the prompt text``).
        """
        row = self.rows[i]
        if key in row:
            return row[key]
        if key not in self.columns:
            raise DataError(
                f"{self.source} has no column {key!r} ({setting}); its columns are {self.columns}; "
                f"set {setting} to the column holding {holds}"
            )
        raise DataError(f"{self.where(i)}: no {key!r} ({setting}); this row has {sorted(row)}")


def read_table(
    path: str | Path,
    fmt: str = "auto",
    split: str = "train",
    *,
    setting: str = "data.path",
    what: str = "rows",
    format_setting: str | None = None,
) -> Table:
    """Every row of a JSONL file, a Parquet file, or a saved `datasets` directory.

    ``fmt="auto"`` goes by the path: a directory is a saved dataset, ``*.parquet`` Parquet,
    ``*.jsonl`` (or ``.json``) JSON Lines. ``split`` picks the split of a saved ``DatasetDict``.
    ``setting`` (the config key naming the path), ``what`` (``prompts``) and ``format_setting``
    (``data.format``, where one exists) only shape the error messages.
    """
    source = str(path)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{setting}={source!r} does not exist; give {_KINDS}")
    if fmt == "auto":
        fmt = _format_of(path, source, setting, format_setting)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r} for {source}; the formats are auto, {', '.join(FORMATS)}")
    if (fmt == "jsonl" and path.is_dir()) or (fmt == "datasets" and not path.is_dir()):
        kind = "a directory" if path.is_dir() else "a file"
        raise DataError(f"{source} is {kind}, which cannot be read as {fmt}; give {_KINDS}")
    lines = None
    try:
        if fmt == "jsonl":
            rows, lines = _read_jsonl(path, source)
        elif fmt == "parquet":
            rows = _read_parquet(path, source)
        else:
            rows = _read_saved_dataset(path, source, split)
    except OSError as exc:  # unreadable (permissions, a vanished mount); the readers catch the rest
        raise DataError(f"cannot read {source}: {exc.strerror or _first_line(exc)}") from None
    if not rows:
        raise DataError(f"{source} holds no {what}; point {setting} at non-empty data")
    return Table(source=source, rows=rows, lines=lines)


def _format_of(path: Path, source: str, setting: str, format_setting: str | None) -> str:
    if path.is_dir():
        return "datasets"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        also = f", or set {format_setting}" if format_setting else ""
        raise DataError(
            f"{setting}={source!r}: cannot tell the format from the name {path.name!r}; "
            f"give {_KINDS} (name a file .jsonl or .parquet{also})"
        )
    return fmt


def _read_jsonl(path: Path, source: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Rows and their line numbers; blank lines are skipped. Decoded line by line, so that a
    non-UTF-8 byte is reported at its line rather than as a decoder traceback."""
    rows, lines = [], []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # tolerate a byte-order mark
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{source} line {number}: not UTF-8 text (byte {raw[exc.start]:#04x} at byte {exc.start + 1} "
                    "of the line); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{source} line {number}: not valid JSON ({exc.msg} at column {exc.colno}): "
                    f"{line.strip()[:80]!r}; every line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{source} line {number}: expected a JSON object, got {type(row).__name__}; "
                    "every line must be one JSON object (JSON Lines)"
                )
            rows.append(row)
            lines.append(number)
    return rows, lines


def _read_parquet(path: Path, source: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"{source} is not a readable Parquet file ({_first_line(exc)}); "
            "write it again, e.g. with pandas or datasets"
        ) from None
    return table.to_pylist()


def _read_saved_dataset(path: Path, source: str, split: str) -> list[dict[str, Any]]:
    """Rows of a ``save_to_disk`` directory; of a DatasetDict, only ``split`` is loaded."""
    if (path / "dataset_dict.json").is_file():
        splits = _json_file(path / "dataset_dict.json", source).get("splits", [])
        if split not in splits:
            raise DataError(
                f"{source} is a DatasetDict without a split {split!r}; its splits are {splits}; "
                "set data.split to one of them"
            )
        path = path / split
    if not (path / "state.json").is_file():
        raise DataError(
            f"{source} is a directory but not a saved dataset (it has neither state.json nor dataset_dict.json); "
            f"give {_KINDS}"
        )
    if not _json_file(path / "state.json", source).get("_data_files"):
        return []  # an empty dataset: saved without a shard, which load_from_disk cannot open
    import datasets

    try:
        # keep_in_memory: read the Arrow files once, and write no cache file anywhere.
        data = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:  # a damaged or foreign directory: datasets raises many kinds
        raise DataError(
            f"cannot load the saved dataset {source}: {_first_line(exc)}; save it again with save_to_disk"
        ) from None
    if isinstance(data, datasets.DatasetDict):  # a split directory holding a dict of its own
        raise DataError(f"{source}: split {split!r} is itself a DatasetDict; save one Dataset per split")
    return data.to_list()


def _json_file(path: Path, source: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"cannot load the saved dataset {source}: {path.name} is unreadable ({_first_line(exc)})"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"cannot load the saved dataset {source}: {path.name} is not a JSON object")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
