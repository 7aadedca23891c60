"""Chat prompts: what a row's prompt is, and rendering chats with a chat template.

A row holds a text prompt (``data.prompt_key``) or a chat (``data.messages_key``, OpenAI-style
``[{role, content}]``). Chats are rendered to text by the tokenizer's chat template, or by
``data.chat_template`` when set, and the text is tokenised with ``add_special_tokens=False``:
the template owns BOS and the turn markers. With no template at all, asking for a chat is an
error rather than a guessed format, since a model trained on one format scores poorly on another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_dist.data.reader import DataError, Table

if TYPE_CHECKING:
    from rlhf_dist.config.schema import DataConfig
    from rlhf_dist.config.stages import StageDataConfig

Messages = list[dict[str, Any]]


def as_messages(value: Any, where: str, key: str) -> Messages:
    """``value`` checked as a chat: a non-empty list of ``{role: str, content: str}`` mappings."""
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: {key!r} (data.messages_key) must be a non-empty list of {{role, content}} messages, "
            f"got {str(value)[:60]!r}"
        )
    for j, message in enumerate(value):
        if not isinstance(message, dict) or not all(isinstance(message.get(k), str) for k in ("role", "content")):
            raise DataError(
                f"{where}: message {j} of {key!r} is {str(message)[:80]!r}; every message needs a string "
                "'role' and a string 'content'"
            )
    return value


def check_not_sharegpt(table: Table) -> None:
    """ShareGPT's ``conversations`` of ``{from, value}`` turns: named, with the conversion."""
    rows = [r for r in table.rows[:5] if isinstance(r.get("conversations"), list) and r["conversations"]]
    if rows and isinstance(rows[0]["conversations"][0], dict) and "from" in rows[0]["conversations"][0]:
        raise DataError(
            f"{table.source}: ShareGPT from/value messages ('conversations') are not supported; convert each "
            "turn to {role, content} (from human -> role user, gpt -> assistant, system -> system; value -> "
            "content) under a 'messages' column"
        )
    if rows:
        raise DataError(
            f"{table.source}: the chats are under 'conversations'; set data.messages_key=conversations"
        )


def row_prompt(table: Table, i: int, cfg: DataConfig | StageDataConfig) -> tuple[str, str | Messages]:
    """The prompt of row ``i``: ``(key, text)`` or ``(key, messages)``; ``key`` is the column used.

    A row with ``cfg.messages_key`` is a chat; otherwise ``cfg.prompt_key`` holds text, wrapped
    as one user message when ``cfg.apply_chat_template`` is set.
    """
    row, where = table[i], table.where(i)
    if row.get(cfg.messages_key) is not None:
        return cfg.messages_key, as_messages(row[cfg.messages_key], where, cfg.messages_key)
    if cfg.prompt_key not in row:
        if "conversations" in table.columns:
            check_not_sharegpt(table)
        if cfg.prompt_key in table.columns or cfg.messages_key in table.columns:
            raise DataError(
                f"{where}: no {cfg.prompt_key!r} (data.prompt_key) or {cfg.messages_key!r} (data.messages_key); "
                f"this row has {sorted(row)}"
            )
        raise DataError(
            f"{table.source} has no column {cfg.prompt_key!r} (data.prompt_key) or {cfg.messages_key!r} "
            f"(data.messages_key); its columns are {table.columns}; set data.prompt_key to the column "
            "holding text prompts, or data.messages_key to the one holding chats"
        )
    text = row[cfg.prompt_key]
    if isinstance(text, list):  # TRL's conversational prompt: a chat under "prompt"
        return cfg.prompt_key, as_messages(text, where, cfg.prompt_key)
    if not isinstance(text, str):
        raise DataError(f"{where}: {cfg.prompt_key!r} is a {type(text).__name__} ({str(text)[:60]}), expected a string")
    if cfg.apply_chat_template:
        return cfg.prompt_key, [{"role": "user", "content": text}]
    return cfg.prompt_key, text


@dataclass(frozen=True)
class ChatRenderer:
    """Renders chats with ``template`` (``data.chat_template``) or else the tokenizer's template."""

    tokenizer: Any
    template: str | None = None
    system_prompt: str | None = None  # prepended to chats that do not open with a system message
    tools: list[dict] | None = None  # JSON schemas of a multi-turn run's tools, for the template's `tools=`

    @classmethod
    def from_config(cls, tokenizer: Any, cfg: DataConfig | StageDataConfig) -> ChatRenderer:
        return cls(tokenizer, cfg.chat_template, cfg.system_prompt)

    def render(self, messages: Messages, add_generation_prompt: bool, where: str) -> str:
        """The chat as the template writes it; ``where`` (e.g. ``p.jsonl line 3``) heads errors.

        A prompt (``add_generation_prompt``) whose last message is the assistant's is a prefill: the
        model continues that message, so no new assistant turn is opened and the turn is not closed."""
        if not (self.template or getattr(self.tokenizer, "chat_template", None)):
            raise DataError(
                f"{where} is rendered as a chat, but the tokenizer has no chat template and "
                "data.chat_template is not set; set data.chat_template to a Jinja template, use a model "
                "whose tokenizer has one, or give text prompts without data.apply_chat_template"
            )
        messages = self.with_system(messages)
        prefill = add_generation_prompt and messages[-1]["role"] == "assistant"
        try:
            return self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, add_generation_prompt=add_generation_prompt and not prefill,
                continue_final_message=prefill, tokenize=False, tools=self.tools,
            )
        except Exception as exc:  # jinja2 errors, and the templates' own raise_exception(...)
            raise DataError(f"{where}: the chat template failed on this chat: {exc}") from None

    def with_system(self, messages: Messages) -> Messages:
        """``messages`` as rendered: ``system_prompt`` first unless the chat opens with a system message."""
        if self.system_prompt is not None and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return list(messages)

    def encode(self, messages: Messages, add_generation_prompt: bool, where: str) -> tuple[str, list[int]]:
        """``(text, ids)`` of the rendered chat; the ids hold no special tokens the template did not write."""
        text = self.render(messages, add_generation_prompt, where)
        return text, list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_replies(
        self, prompt: Messages, replies: list[str], where: str
    ) -> tuple[list[int], list[list[int]]]:
        """Token ids of a chat prompt and of each assistant reply, as the template writes them.

        Each reply is rendered as the assistant's turn after ``prompt``, so it ends the way the
        template ends a turn (e.g. with eos). The prompt's last token may merge with a reply's
        first, so the prompt ends where every full rendering stops agreeing with the prompt alone.
        """
        _, prompt_ids = self.encode(prompt, True, where)
        fulls = [self.encode([*prompt, {"role": "assistant", "content": r}], False, where)[1] for r in replies]
        common = len(prompt_ids)
        for full in fulls:
            agree = 0
            while agree < min(common, len(full)) and prompt_ids[agree] == full[agree]:
                agree += 1
            common = agree
        responses = [full[common:] for full in fulls]
        if not all(responses):
            raise DataError(f"{where}: the chat template writes nothing for the assistant's reply; check the template")
        return prompt_ids[:common], responses
