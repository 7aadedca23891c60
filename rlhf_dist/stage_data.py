"""Data of the supervised stages: demonstrations (SFT) and preference pairs (RM, DPO).

Rows come from JSONL (errors carry the line number), Parquet, or a Hugging Face `datasets`
directory saved with ``save_to_disk``. Tokenised examples keep the prompt and the response apart,
so that losses and log-probs cover response tokens only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_dist.config.stages import StageDataConfig
from rlhf_dist.errors import UserError


class StageDataError(UserError):
    pass


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with eos; the loss covers these tokens only


@dataclass(frozen=True)
class PairExample:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class Examples:
    train: list[Any]
    eval: list[Any]
    num_truncated: int = 0
    num_skipped: int = 0


def read_rows(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise StageDataError(f"data path {str(path)!r} does not exist; set data.path")
    if fmt == "auto":
        fmt = "datasets" if path.is_dir() else "parquet" if path.suffix == ".parquet" else "jsonl"
    if fmt == "jsonl":
        rows = _read_jsonl(path)
    else:
        try:
            import datasets
        except ImportError:
            raise StageDataError(f"reading {fmt} needs the `datasets` package: pip install datasets") from None
        data = datasets.load_from_disk(str(path)) if fmt == "datasets" else datasets.Dataset.from_parquet(str(path))
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else next(iter(data.values()))
        rows = list(data)
    if not rows:
        raise StageDataError(f"{path} holds no rows; point data.path at a non-empty dataset")
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageDataError(f"{path}, line {number}: not valid JSON ({exc.msg}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise StageDataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _field(row: dict[str, Any], key: str, number: int, kind: str = "a string") -> Any:
    if key not in row:
        raise StageDataError(f"row {number}: missing field {key!r} (it has {sorted(row)}); set data.*_key to match")
    value = row[key]
    if kind == "a string" and not isinstance(value, str):
        raise StageDataError(f"row {number}: field {key!r} must be {kind}, got {type(value).__name__}")
    return value


def _encode_prompt(tokenizer, text: str) -> list[int]:
    return tokenizer(text).input_ids


def _encode_response(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def _chat_split(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Prompt = every message but the last (with the generation prompt); response = the last one."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(messages, tokenize=True)
        if hasattr(prompt, "input_ids"):
            prompt, full = prompt["input_ids"], full["input_ids"]
        # The prompt's last token may merge with the reply's first (e.g. "assistant: " + "aaa"),
        # so split the full conversation where its tokens stop agreeing with the prompt's.
        common = 0
        while common < min(len(prompt), len(full)) and prompt[common] == full[common]:
            common += 1
        return list(full[:common]), list(full[common:])
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + f"{messages[-1]['role']}: "
    return _encode_prompt(tokenizer, text), _encode_response(tokenizer, messages[-1]["content"])


def _fit(prompt: list[int], responses: list[list[int]], cfg: StageDataConfig) -> tuple[list[int], list[list[int]]] | None:
    """Apply the over-long policy; None means skip (or nothing of a response would be left)."""
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= cfg.max_length:
        return prompt, responses
    if cfg.overlong == "skip":
        return None
    room = cfg.max_length - len(prompt)
    if room < 1:
        prompt = prompt[-(cfg.max_length // 2) :]  # keep the end of the prompt, next to the response
        room = cfg.max_length - len(prompt)
    return prompt, [r[:room] for r in responses]


def _split(examples: list[Any], cfg: StageDataConfig, seed: int) -> tuple[list[Any], list[Any]]:
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(examples) * cfg.eval_fraction))
    if cfg.eval_fraction > 0 and n_eval == 0 and len(examples) > 1:
        n_eval = 1
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def sft_examples(rows: list[dict[str, Any]], tokenizer, cfg: StageDataConfig, seed: int) -> Examples:
    """Prompt/response rows, or chat rows with `messages` (the last message is the response)."""
    examples, truncated, skipped = [], 0, 0
    for number, row in enumerate(rows, start=1):
        if cfg.messages_key in row:
            messages = _field(row, cfg.messages_key, number, "a list")
            if not isinstance(messages, list) or len(messages) < 2:
                raise StageDataError(f"row {number}: {cfg.messages_key!r} must be a list of at least 2 messages")
            prompt, response = _chat_split(tokenizer, messages)
        else:
            prompt = _encode_prompt(tokenizer, _field(row, cfg.prompt_key, number))
            response = _encode_response(tokenizer, _field(row, cfg.response_key, number))
        fitted = _fit(prompt, [response], cfg)
        if fitted is None:
            skipped += 1
            continue
        truncated += fitted[1][0] != response or fitted[0] != prompt
        examples.append(SFTExample(fitted[0], fitted[1][0]))
    return _finish(examples, cfg, seed, truncated, skipped)


def preference_examples(rows: list[dict[str, Any]], tokenizer, cfg: StageDataConfig, seed: int) -> Examples:
    """Rows of (prompt, chosen, rejected)."""
    examples, truncated, skipped = [], 0, 0
    for number, row in enumerate(rows, start=1):
        prompt = _encode_prompt(tokenizer, _field(row, cfg.prompt_key, number))
        chosen = _encode_response(tokenizer, _field(row, cfg.chosen_key, number))
        rejected = _encode_response(tokenizer, _field(row, cfg.rejected_key, number))
        fitted = _fit(prompt, [chosen, rejected], cfg)
        if fitted is None:
            skipped += 1
            continue
        truncated += fitted[0] != prompt or fitted[1] != [chosen, rejected]
        examples.append(PairExample(fitted[0], *fitted[1]))
    return _finish(examples, cfg, seed, truncated, skipped)


def _finish(examples: list[Any], cfg: StageDataConfig, seed: int, truncated: int, skipped: int) -> Examples:
    if not examples:
        raise StageDataError(
            f"no usable rows: {skipped} skipped as longer than data.max_length={cfg.max_length}; "
            "raise it or set data.overlong=truncate"
        )
    train, held = _split(examples, cfg, seed)
    return Examples(train, held, int(truncated), skipped)
