"""RL prompts: the builtin synthetic tasks, prompt files, chat rendering and tokenisation.

:func:`load_prompts` turns ``cfg.data`` into a :class:`PromptSet` of tokenized prompts, each with
the rest of its row (``Prompt.columns``), so that rewards can check a response against a label.
Over-long prompts are truncated or skipped, and counted.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf_dist.config.schema import DataConfig
from rlhf_dist.data.chat import ChatRenderer, row_prompt
from rlhf_dist.data.reader import DataError, Table, read_table

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt and the other columns of its row."""

    index: int  # position in PromptSet.prompts; the sampler's indices point here
    # The rendered prompt the model sees (chat template applied; decoded from ids when truncated).
    # Rewards receive it as `prompts`.
    text: str
    # Token ids, at most max_prompt_tokens: a text prompt with the tokenizer's special tokens,
    # a chat prompt exactly as its template writes it (add_special_tokens=False).
    ids: list[int]
    # The row's other fields (all but the prompt's own column), e.g. {"answer": "42"}; rewards get
    # each as a keyword argument. Empty for builtin tasks.
    columns: dict[str, Any] = field(default_factory=dict)
    # The chat as rendered (system prompt included) for a multi-turn run, whose trajectories append
    # to it; None for a single-turn run.
    messages: list[dict] | None = None


@dataclass
class PromptSet:
    """The prompts of a run and what loading them dropped or cut."""

    prompts: list[Prompt]
    num_truncated: int = 0  # prompts cut to max_prompt_tokens tokens
    num_skipped: int = 0  # prompts dropped for being longer than max_prompt_tokens
    num_empty: int = 0  # empty prompts dropped (no text, or a chat of empty messages)
    num_rows: int = 0  # rows read
    max_tokens: int = 0  # data.max_prompt_tokens
    source: str = ""

    def __len__(self) -> int:
        return len(self.prompts)

    def report(self) -> str | None:
        """One line on what loading cut or dropped, or None when it kept every row whole."""
        parts = []
        if self.num_truncated:
            parts.append(f"{self.num_truncated} of {self.num_rows} prompts of {self.source} were longer than "
                         f"data.max_prompt_tokens={self.max_tokens} and were cut to it (a text prompt keeps its "
                         "first tokens, a chat prompt its last)")
        if self.num_skipped:
            parts.append(f"{self.num_skipped} of {self.num_rows} prompts of {self.source} were longer than "
                         f"data.max_prompt_tokens={self.max_tokens} and were dropped (data.overlong=skip)")
        if self.num_empty:
            parts.append(f"{self.num_empty} of {self.num_rows} prompts of {self.source} were empty and were dropped")
        return "; ".join(parts) or None


# ----------------------------------------------------------------------------- builtin tasks


# The tiny tokenizer's training text and the built-in letters task draw from these words.
WORDS = (
    "the a an of to and in is it that for on with as was at by be this are or from not have "
    "write say letter letters word words number numbers count list repeat answer question please "
    "cat dog bird fish tree sun moon star red blue green yellow big small fast slow happy sad "
    "apple banana cherry grape lemon mango orange peach pear plum one two three four five six "
    "seven eight nine ten good bad yes no more less many few all some every none abc aaa bbb"
).split()


def _letters_task(n: int, seed: int) -> list[str]:
    """``write letters: cat red banana``: 2-6 words the policy may echo; the reward counts a's."""
    instructions = ("write letters:", "write words:", "say letters:", "repeat:")
    rng = random.Random(seed)
    return [
        f"{rng.choice(instructions)} {' '.join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))}"
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


# ----------------------------------------------------------------------------- loading


@dataclass
class _Row:
    """A prompt before tokenisation."""

    text: str
    is_chat: bool  # rendered by a chat template: tokenised without special tokens, truncated at the start
    columns: dict[str, Any]
    empty: bool = False  # no text at all (or a chat whose messages are all empty)
    messages: list[dict] | None = None  # the chat rendered (multi-turn runs keep it)


def _read(cfg: DataConfig, source: str, seed: int, setting: str) -> Table:
    if source.startswith(BUILTIN_PREFIX):
        texts = builtin_prompts(source[len(BUILTIN_PREFIX) :], cfg.num_builtin_prompts, seed)
        return Table(source=source, rows=[{cfg.prompt_key: text} for text in texts])
    return read_table(source, split=cfg.split, setting=setting, what="prompts")


def _render_rows(table: Table, cfg: DataConfig, renderer: ChatRenderer, as_chat: bool) -> list[_Row]:
    rows = []
    for i, row in enumerate(table):
        key, prompt = row_prompt(table, i, cfg)
        columns = {k: v for k, v in row.items() if k != key}
        if isinstance(prompt, str) and not as_chat:
            rows.append(_Row(prompt, False, columns, not prompt.strip()))
            continue
        chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        empty = not any(str(m.get("content") or "").strip() for m in chat)
        messages = renderer.with_system(chat)
        text = renderer.render(messages, add_generation_prompt=True, where=table.where(i))
        rows.append(_Row(text, True, columns, empty, messages if as_chat else None))
    return rows


def load_prompts(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    source: str | None = None,
    *,
    setting: str = "data.prompts",
    tools: list[dict] | None = None,
    multi_turn: bool = False,
) -> PromptSet:
    """Read, render and tokenize the prompts of ``source`` (default ``cfg.prompts``).

    ``source`` lets another section (eval) load its own file with the same rendering rules;
    ``setting`` names that section's key in error messages. A prompt of more than
    ``cfg.max_prompt_tokens`` tokens is cut (``overlong: truncate``) or dropped (``skip``): a text
    prompt keeps its first tokens, a chat prompt its last, so that the generation prompt survives.
    ``seed`` only matters for builtin tasks. A ``multi_turn`` run renders every prompt as a chat (a text
    prompt is one user message), with the ``tools`` schemas, and keeps each prompt's messages.
    """
    source = cfg.prompts if source is None else source
    table = _read(cfg, source, seed, setting)
    renderer = dataclasses.replace(ChatRenderer.from_config(tokenizer, cfg), tools=tools)
    read = _render_rows(table, cfg, renderer, multi_turn)
    rows = [row for row in read if not row.empty]
    if len(read) and (len(read) - len(rows)) * 2 >= len(read):
        raise DataError(
            f"{len(read) - len(rows)} of {len(read)} prompts of {source} ({setting}) are empty; check "
            f"data.prompt_key={cfg.prompt_key!r} (or data.messages_key={cfg.messages_key!r}) names the prompt column"
        )
    ids = [None] * len(rows)
    for is_chat in (False, True):  # one batched tokenizer call per kind
        picked = [i for i, row in enumerate(rows) if row.is_chat == is_chat]
        if picked:
            encoded = tokenizer([rows[i].text for i in picked], add_special_tokens=not is_chat)["input_ids"]
            for i, row_ids in zip(picked, encoded, strict=True):
                ids[i] = list(row_ids)

    limit = cfg.max_prompt_tokens
    prompts: list[Prompt] = []
    truncated = skipped = 0
    for row, row_ids in zip(rows, ids, strict=True):
        text = row.text
        if len(row_ids) > limit:
            if cfg.overlong == "skip":
                skipped += 1
                continue
            truncated += 1
            if row.is_chat:
                row_ids = row_ids[-limit:]
                text = tokenizer.decode(row_ids)
            else:
                row_ids = row_ids[:limit]
                text = tokenizer.decode(row_ids, skip_special_tokens=True)
        prompts.append(Prompt(index=len(prompts), text=text, ids=row_ids, columns=row.columns, messages=row.messages))
    if not prompts:
        raise DataError(
            f"all {len(rows)} prompts of {source} are longer than data.max_prompt_tokens={limit} "
            "tokens and data.overlong=skip drops them; raise data.max_prompt_tokens or set "
            "data.overlong=truncate"
        )
    return PromptSet(prompts=prompts, num_truncated=truncated, num_skipped=skipped, num_empty=len(read) - len(rows),
                     num_rows=len(read), max_tokens=limit, source=setting if source.startswith(BUILTIN_PREFIX) else source)
