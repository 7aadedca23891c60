"""Prompts: the builtin synthetic tasks, JSONL files, tokenization, and the resumable sampler.

:func:`load_prompts` turns ``cfg.data`` into a :class:`PromptSet` of tokenized prompts (over-long
ones truncated or skipped, and counted). :class:`PromptSampler` hands out dataset indices in
batches, one seeded permutation per epoch; its state is a few integers that a checkpoint saves so
that a resumed run sees exactly the prompts the uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf_dist.config.schema import DataConfig
from rlhf_dist.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUILTIN_PREFIX = "builtin:"


class DataError(UserError):
    """The prompt data cannot be read or used as configured."""


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt."""

    index: int  # position in PromptSet.prompts; the sampler's indices point here
    text: str  # what the model sees (decoded from ids when truncated); rule rewards read it
    ids: list[int]  # token ids, with the tokenizer's special tokens, at most max_prompt_tokens


@dataclass
class PromptSet:
    """The prompts of a run and what loading them dropped or cut."""

    prompts: list[Prompt]
    num_truncated: int = 0  # prompts cut to their first max_prompt_tokens tokens
    num_skipped: int = 0  # prompts dropped for being longer than max_prompt_tokens

    def __len__(self) -> int:
        return len(self.prompts)


# ----------------------------------------------------------------------------- builtin tasks


def _letters_task(n: int, seed: int) -> list[str]:
    """``write letters: cat red banana``: 2-6 words the policy may echo; the reward counts a's."""
    from rlhf_dist.tiny import _WORDS  # the tiny tokenizer is trained on these words

    instructions = ("write letters:", "write words:", "say letters:", "repeat:")
    rng = random.Random(seed)
    return [
        f"{rng.choice(instructions)} {' '.join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))}"
        for _ in range(n)
    ]


_BUILTIN_TASKS: dict[str, Callable[[int, int], list[str]]] = {"letters": _letters_task}


def builtin_prompts(task: str, n: int, seed: int) -> list[str]:
    """``n`` deterministic prompt texts of a builtin synthetic task (same seed, same prompts)."""
    if task not in _BUILTIN_TASKS:
        raise DataError(
            f"unknown builtin task {task!r} in data.prompts; builtin tasks: "
            f"{', '.join(BUILTIN_PREFIX + name for name in sorted(_BUILTIN_TASKS))}"
        )
    if n < 1:
        raise DataError(f"data.num_builtin_prompts must be >= 1, got {n}")
    return _BUILTIN_TASKS[task](n, seed)


# ----------------------------------------------------------------------------- files


def read_jsonl_prompts(path: Path, key: str) -> list[str]:
    """The ``key`` string of every row of a JSONL file; blank lines are ignored.

    Every problem is a :class:`DataError` giving the file and its 1-based line number.
    """
    if not path.is_file():
        raise DataError(
            f"prompt file {str(path)!r} (data.prompts) does not exist; give a .jsonl file or "
            f"{BUILTIN_PREFIX}<task> ({', '.join(sorted(_BUILTIN_TASKS))})"
        )
    texts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno}): "
                    f"{line.strip()[:80]!r}; every line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            if key not in row:
                raise DataError(
                    f"{path} line {number}: no key {key!r} (data.prompt_key); the row has keys "
                    f"{sorted(row)}; set data.prompt_key to the one holding the prompt"
                )
            if not isinstance(row[key], str):
                raise DataError(
                    f"{path} line {number}: {key!r} is a {type(row[key]).__name__} "
                    f"({str(row[key])[:60]}), expected a string"
                )
            texts.append(row[key])
    if not texts:
        raise DataError(f"prompt file {path} holds no prompts (it is empty or only blank lines)")
    return texts


def _prompt_texts(cfg: DataConfig, seed: int) -> list[str]:
    if cfg.prompts.startswith(BUILTIN_PREFIX):
        return builtin_prompts(cfg.prompts[len(BUILTIN_PREFIX) :], cfg.num_builtin_prompts, seed)
    path = Path(cfg.prompts).expanduser()
    if path.suffix != ".jsonl":
        raise DataError(
            f"data.prompts={cfg.prompts!r}: only .jsonl prompt files are supported; convert it to "
            f"one JSON object per line with a {cfg.prompt_key!r} field, or use {BUILTIN_PREFIX}<task>"
        )
    return read_jsonl_prompts(path, cfg.prompt_key)


def load_prompts(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PromptSet:
    """Read and tokenize the prompts named by ``cfg.prompts``.

    A prompt of more than ``cfg.max_prompt_tokens`` tokens (special tokens included) keeps its
    first ``max_prompt_tokens`` tokens (``overlong: truncate``) or is dropped (``skip``).
    ``seed`` only matters for builtin tasks.
    """
    texts = _prompt_texts(cfg, seed)
    limit = cfg.max_prompt_tokens
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    prompts: list[Prompt] = []
    truncated = skipped = 0
    for text, ids in zip(texts, encoded, strict=True):
        if len(ids) > limit:
            if cfg.overlong == "skip":
                skipped += 1
                continue
            truncated += 1
            ids = ids[:limit]
            text = tokenizer.decode(ids, skip_special_tokens=True)
        prompts.append(Prompt(index=len(prompts), text=text, ids=list(ids)))
    if not prompts:
        raise DataError(
            f"all {len(texts)} prompts of {cfg.prompts} are longer than data.max_prompt_tokens={limit} "
            "tokens and data.overlong=skip drops them; raise data.max_prompt_tokens or set "
            "data.overlong=truncate"
        )
    return PromptSet(prompts=prompts, num_truncated=truncated, num_skipped=skipped)


# ----------------------------------------------------------------------------- sampling


class PromptSampler:
    """Batches of dataset indices: a seeded permutation per epoch, walked without replacement.

    Epoch ``e`` visits every index once, in the order of a permutation seeded by ``(seed, e)``
    (identity when ``shuffle`` is off). A batch that runs past the end of an epoch continues with
    the next epoch's permutation.
    """

    def __init__(self, num_prompts: int, seed: int, shuffle: bool = True) -> None:
        if num_prompts < 1:
            raise DataError(f"cannot sample from {num_prompts} prompts; the prompt set is empty")
        self.num_prompts, self.seed, self.shuffle = num_prompts, seed, shuffle
        self.epoch = 0  # the epoch the next index comes from
        self.cursor = 0  # position of the next index in that epoch's permutation
        self.consumed = 0  # indices handed out since the start of the run
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_prompts)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)

    def next_batch(self, n: int) -> list[int]:
        """The next ``n`` dataset indices."""
        if n < 0:
            raise ValueError(f"batch size must be >= 0, got {n}")
        batch: list[int] = []
        while len(batch) < n:
            if self.cursor == self.num_prompts:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(batch), self.num_prompts - self.cursor)
            batch += self._order[self.cursor : self.cursor + take].tolist()
            self.cursor += take
        self.consumed += n
        return batch

    def state_dict(self) -> dict[str, int | bool]:
        """Plain ints (JSON-safe) from which :meth:`load_state_dict` resumes exactly."""
        return {
            "num_prompts": self.num_prompts,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the dataset size, seed and shuffle must match the saved run."""
        saved = (state["num_prompts"], state["seed"], state["shuffle"])
        if saved != (self.num_prompts, self.seed, self.shuffle):
            raise DataError(
                f"the checkpoint's prompt sampler was saved for (num_prompts, seed, shuffle) = {saved}, "
                f"but this run has {(self.num_prompts, self.seed, self.shuffle)}; resume with the same "
                "data.prompts, data.max_prompt_tokens/overlong, seed and data.shuffle"
            )
        if not 0 <= state["cursor"] <= self.num_prompts:
            raise DataError(f"corrupt sampler state: cursor {state['cursor']} outside [0, {self.num_prompts}]")
        self.epoch, self.cursor, self.consumed = state["epoch"], state["cursor"], state["consumed"]
        self._order = self._permutation(self.epoch)
