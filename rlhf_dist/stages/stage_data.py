"""Data of the supervised stages: demonstrations (SFT) and preference pairs (RM, DPO).

Rows come from the shared reader (:func:`rlhf_dist.data.read_table`: JSONL, Parquet or a saved
`datasets` directory) and chats are rendered by the shared :class:`~rlhf_dist.data.ChatRenderer`,
as RL prompts are. Tokenised examples keep the prompt and the response apart, so that losses and
log-probs cover response tokens only.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_dist.config.stages import StageConfig, StageDataConfig
from rlhf_dist.data.chat import ChatRenderer, Messages
from rlhf_dist.data.formats import describe, pair_layout, pair_row, sft_layout, sft_row
from rlhf_dist.data.reader import DataError, Table, read_table


class StageDataError(DataError):
    """Rows of a supervised stage that cannot be turned into examples."""


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: list[int]
    response_ids: list[int]  # ends with eos (or the template's end of turn); the loss covers these only


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
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped as unable to teach
    layout: str = ""  # the data's layout in words (rlhf_dist/data/formats.py), printed at preparation

    def teaching_problem(self, kind: str, cfg: StageConfig) -> str | None:
        """Why these examples would train nothing: no whole mini-batch on some rank, so zero
        optimizer steps (see `StageTrainer.train_epoch`)."""
        workers, mini = cfg.learner.num_workers, cfg.learner.mini_batch_size
        if (len(self.train) // workers) // (mini // workers) > 0:
            return None
        what = "pairs" if kind != "sft" else "examples"
        held = f" after holding out {len(self.eval)} for eval (data.eval_fraction={cfg.data.eval_fraction})" if self.eval else ""
        return (f"{kind}: {len(self.train)} training {what}{held} make no whole mini-batch of "
                f"learner.mini_batch_size={mini}, so no optimizer step would be taken; add data, or lower "
                "learner.mini_batch_size (a multiple of learner.num_workers x learner.micro_batch_size)")


def load_rows(cfg: StageDataConfig) -> Table:
    """The rows of ``cfg.path`` (in ``cfg.format``, split ``cfg.split``)."""
    if cfg.path is None:
        raise StageDataError("no data.path; set it to a .jsonl or .parquet file or a saved `datasets` directory")
    return read_table(cfg.path, cfg.format, cfg.split, setting="data.path", format_setting="data.format")


def read_rows(path: str | Path, fmt: str = "auto", split: str = "train") -> Table:
    """The rows of ``path``; :func:`load_rows` is the same from a config."""
    return read_table(path, fmt, split, setting="data.path", format_setting="data.format")


def _table(rows: Table | Sequence[dict[str, Any]]) -> Table:
    return rows if isinstance(rows, Table) else Table(source="data", rows=list(rows))


def _text(table: Table, i: int, key: str, setting: str, holds: str) -> str:
    value = table.value(i, key, setting, holds)
    if not isinstance(value, str):
        raise StageDataError(f"{table.where(i)}: {key!r} ({setting}) must be a string, got {type(value).__name__}")
    return value


def _encode_prompt(tokenizer, text: str) -> list[int]:
    return tokenizer(text).input_ids


def _encode_response(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def _encode(
    tokenizer, renderer: ChatRenderer, prompt: str | Messages, replies: list[str], where: str
) -> tuple[list[int], list[list[int]]]:
    """Prompt ids and reply ids: through the chat template for a chat, else as plain text + eos."""
    if isinstance(prompt, list):
        return renderer.encode_replies(prompt, replies, where)
    return _encode_prompt(tokenizer, prompt), [_encode_response(tokenizer, r) for r in replies]


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
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(examples) * cfg.eval_fraction))
    if cfg.eval_fraction > 0 and n_eval == 0 and len(examples) > 1:
        n_eval = 1
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def sft_examples(rows: Table | Sequence[dict[str, Any]], tokenizer, cfg: StageDataConfig, seed: int) -> Examples:
    """Prompt/response rows, or chat rows under ``cfg.messages_key`` (the last message is the response)."""
    table, renderer = _table(rows), ChatRenderer.from_config(tokenizer, cfg)
    layout = sft_layout(table, cfg)
    examples, truncated, skipped = [], 0, 0
    for i in range(len(table)):
        prompt_part, reply = sft_row(table, i, cfg, layout)
        # A chat row may carry the JSON schemas of its tools (TRL's ``tools`` column): the template
        # renders them, as a multi-turn run's prompts are rendered with rollout.multi_turn.tools.
        tools = table[i].get("tools") if isinstance(prompt_part, list) else None
        row_renderer = dataclasses.replace(renderer, tools=tools) if tools else renderer
        prompt, (response,) = _encode(tokenizer, row_renderer, prompt_part, [reply], table.where(i))
        fitted = _fit(prompt, [response], cfg)
        if fitted is None:
            skipped += 1
            continue
        truncated += fitted[1][0] != response or fitted[0] != prompt
        examples.append(SFTExample(fitted[0], fitted[1][0]))
    out = _finish(examples, cfg, seed, truncated, skipped)
    out.layout = describe(layout, cfg)
    return out


def preference_examples(rows: Table | Sequence[dict[str, Any]], tokenizer, cfg: StageDataConfig, seed: int) -> Examples:
    """Rows of (prompt, chosen, rejected); the prompt is text or a chat under ``cfg.messages_key``."""
    table, renderer = _table(rows), ChatRenderer.from_config(tokenizer, cfg)
    examples, truncated, skipped = [], 0, 0
    dropped = {"chosen == rejected": 0, "an empty chosen or rejected": 0}
    layout = pair_layout(table, cfg)
    for i in range(len(table)):
        prompt_part, *replies = pair_row(table, i, cfg, layout)
        if not replies[0].strip() or not replies[1].strip():
            dropped["an empty chosen or rejected"] += 1  # nothing to prefer, or nothing to prefer it to
            continue
        if replies[0] == replies[1]:
            dropped["chosen == rejected"] += 1  # a zero margin, whatever the model does
            continue
        prompt, (chosen, rejected) = _encode(tokenizer, renderer, prompt_part, replies, table.where(i))
        fitted = _fit(prompt, [chosen, rejected], cfg)
        if fitted is None:
            skipped += 1
            continue
        truncated += fitted[0] != prompt or fitted[1] != [chosen, rejected]
        examples.append(PairExample(fitted[0], *fitted[1]))
    _refuse_mostly_degenerate(dropped, len(table), cfg)
    out = _finish(examples, cfg, seed, truncated, skipped)
    out.dropped = {reason: n for reason, n in dropped.items() if n}
    out.layout = describe(layout, cfg)
    return out


def _refuse_mostly_degenerate(dropped: dict[str, int], total: int, cfg: StageDataConfig) -> None:
    """Pairs that cannot teach a preference are dropped; when they are half the data or more, the
    data is wrong (swapped columns, a broken export) and the run is refused."""
    bad = sum(dropped.values())
    if total and bad * 2 >= total:
        counts = ", ".join(f"{n} with {reason}" for reason, n in dropped.items() if n)
        raise StageDataError(
            f"{bad} of {total} preference pairs in {cfg.path or 'the data'} cannot teach a preference ({counts}); "
            f"check data.chosen_key={cfg.chosen_key!r} and data.rejected_key={cfg.rejected_key!r} name two "
            "different responses"
        )


def _finish(examples: list[Any], cfg: StageDataConfig, seed: int, truncated: int, skipped: int) -> Examples:
    if not examples:
        raise StageDataError(
            f"no usable rows: {skipped} skipped as longer than data.max_length={cfg.max_length}; "
            "raise it or set data.overlong=truncate"
        )
    train, held = _split(examples, cfg, seed)
    return Examples(train, held, int(truncated), skipped)
