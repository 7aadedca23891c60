"""Layouts of supervised data: ours and TRL's standard and conversational ones, detected from the
columns as TRL detects them, and each row made one (prompt, reply...) example.

SFT rows (`sft_layout`, `sft_row`):

- ``chat``: a chat under ``data.messages_key`` whose last message, the assistant's, is learnt (ours,
  and TRL's conversational language modelling); rows without it fall back to prompt/response;
- ``prompt/response``: ours (``data.prompt_key``, ``data.response_key``);
- ``prompt/completion``: TRL's prompt-completion, as text or as chats (a prompt chat and a
  completion holding the assistant message);
- ``text``: TRL's language modelling: the whole text is learnt.

Preference rows (`pair_layout`, `pair_row`):

- ``prompt/chosen/rejected``: an explicit prompt (text, or a chat under the prompt key or
  ``data.messages_key``); chosen and rejected are texts or assistant messages;
- ``chosen/rejected chats``: TRL's implicit prompt: two chats that share every message but the
  last, the assistant's;
- ``Anthropic HH``: ``"\\n\\nHuman: ... \\n\\nAssistant: ..."`` strings that share everything up to
  the last ``\\n\\nAssistant:``, which is the prompt.

A layout we do not take is named as such, with the columns the data has.
"""

from __future__ import annotations

from typing import Any

from rlhf_dist.data.chat import Messages, as_messages, check_not_sharegpt, row_prompt
from rlhf_dist.data.reader import DataError, Table

HH_ASSISTANT = "\n\nAssistant:"
SFT_LAYOUTS = {
    "chat": "chats ({messages}): the last, assistant message is learnt",
    "prompt/response": "prompt/response texts ({prompt}, {response})",
    "prompt/completion": "TRL prompt-completion ({prompt}, completion)",
    "text": "TRL language modelling (text): the whole text is learnt",
}
PAIR_LAYOUTS = {
    "prompt/chosen/rejected": "preferences with an explicit prompt ({prompt}, {chosen}, {rejected})",
    "implicit chats": "TRL preferences with an implicit prompt ({chosen}/{rejected} chats sharing all but the last message)",
    "hh": "Anthropic-HH strings ({chosen}/{rejected}; the prompt is everything up to the last Assistant: turn)",
}


def describe(layout: str, cfg: Any) -> str:
    """The layout in words, with the configured column names."""
    text = {**SFT_LAYOUTS, **PAIR_LAYOUTS}[layout]
    keys = {"messages": cfg.messages_key, "prompt": cfg.prompt_key, "response": cfg.response_key,
            "chosen": cfg.chosen_key, "rejected": cfg.rejected_key}
    return text.format(**keys)


def sft_layout(table: Table, cfg: Any) -> str:
    columns = set(table.columns)
    if "conversations" in columns and cfg.messages_key not in columns:
        check_not_sharegpt(table)
    if cfg.messages_key in columns or cfg.response_key in columns:
        return "chat" if cfg.messages_key in columns else "prompt/response"
    if "completion" in columns and cfg.prompt_key in columns:
        return "prompt/completion"
    if "text" in columns:
        return "text"
    if cfg.prompt_key in columns:
        return "prompt/response"  # whose missing response column the row's read names, with the key to set
    raise DataError(_unknown(table, "SFT", f"{cfg.messages_key} (a chat), {cfg.prompt_key}/{cfg.response_key}, "
                                           f"{cfg.prompt_key}/completion (TRL), or text (TRL)"))


def sft_row(table: Table, i: int, cfg: Any, layout: str) -> tuple[str | Messages, str]:
    """(prompt, response) of SFT row ``i``: a text or a chat, and the text to learn."""
    row, where = table[i], table.where(i)
    if layout == "text":
        return "", _string(row.get("text"), where, "text")
    if layout == "prompt/completion":
        prompt = row.get(cfg.prompt_key)
        prompt = as_messages(prompt, where, cfg.prompt_key) if isinstance(prompt, list) else _string(prompt, where, cfg.prompt_key)
        return prompt, _reply(row.get("completion"), where, "completion")
    if row.get(cfg.messages_key) is not None:
        messages = as_messages(row[cfg.messages_key], where, cfg.messages_key)
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: {cfg.messages_key!r} must end with the assistant message SFT learns, after at least "
                f"one prompt message; got roles {[m['role'] for m in messages]}"
            )
        return messages[:-1], messages[-1]["content"]
    _, prompt = row_prompt(table, i, cfg)
    return prompt, _string(table.value(i, cfg.response_key, "data.response_key", "the response text"), where,
                           cfg.response_key)


def pair_layout(table: Table, cfg: Any) -> str:
    columns = set(table.columns)
    if "conversations" in columns and cfg.messages_key not in columns:
        check_not_sharegpt(table)
    missing = [k for k in (cfg.chosen_key, cfg.rejected_key) if k not in columns]
    if missing:
        raise DataError(_unknown(table, "preference", f"{cfg.prompt_key}/{cfg.chosen_key}/{cfg.rejected_key}, "
                                                      f"{cfg.chosen_key}/{cfg.rejected_key} chats (TRL), or Anthropic-HH "
                                                      f"{cfg.chosen_key}/{cfg.rejected_key} strings"))
    if cfg.prompt_key in columns or cfg.messages_key in columns:
        return "prompt/chosen/rejected"
    first = table[0].get(cfg.chosen_key) if len(table) else None
    if isinstance(first, list):
        return "implicit chats"
    if isinstance(first, str) and HH_ASSISTANT in first:
        return "hh"
    raise DataError(
        f"{table.source} has {cfg.chosen_key!r} and {cfg.rejected_key!r} but no prompt: no {cfg.prompt_key!r} "
        f"(data.prompt_key) or {cfg.messages_key!r} column, and the responses are neither chats nor Anthropic-HH "
        "strings ('\\n\\nHuman: ... \\n\\nAssistant: ...'); add a prompt column, or set data.prompt_key to it"
    )


def pair_row(table: Table, i: int, cfg: Any, layout: str) -> tuple[str | Messages, str, str]:
    """(prompt, chosen, rejected) of preference row ``i``."""
    row, where = table[i], table.where(i)
    chosen = table.value(i, cfg.chosen_key, "data.chosen_key", "the preferred response")
    rejected = table.value(i, cfg.rejected_key, "data.rejected_key", "the rejected response")
    if layout == "implicit chats":
        return _split_chats(as_messages(chosen, where, cfg.chosen_key), as_messages(rejected, where, cfg.rejected_key), where)
    if layout == "hh":
        return _split_hh(_string(chosen, where, cfg.chosen_key), _string(rejected, where, cfg.rejected_key), where)
    if isinstance(row.get(cfg.prompt_key), list) and row.get(cfg.messages_key) is None:
        prompt: str | Messages = as_messages(row[cfg.prompt_key], where, cfg.prompt_key)  # TRL's conversational prompt
    else:
        _, prompt = row_prompt(table, i, cfg)
    return prompt, _reply(chosen, where, cfg.chosen_key), _reply(rejected, where, cfg.rejected_key)


def _split_chats(chosen: Messages, rejected: Messages, where: str) -> tuple[Messages, str, str]:
    """The shared messages are the prompt; each side's last message, the assistant's, the response."""
    if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
        raise DataError(
            f"{where}: chosen and rejected chats must share every message but the last (the implicit prompt); "
            "these differ earlier. Give the prompt in its own column instead"
        )
    for side, chat in (("chosen", chosen), ("rejected", rejected)):
        if chat[-1]["role"] != "assistant":
            raise DataError(f"{where}: the last message of {side} must be the assistant's, got role {chat[-1]['role']!r}")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _split_hh(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: an Anthropic-HH row must hold '\\n\\nAssistant:' turns; chosen has none")
    prompt = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt):
        raise DataError(
            f"{where}: chosen and rejected must share the conversation up to the last '\\n\\nAssistant:' (the "
            "implicit prompt); these differ earlier"
        )
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def _reply(value: Any, where: str, key: str) -> str:
    """A response: a text, or (TRL conversational) a list holding the assistant's message."""
    if isinstance(value, list):
        messages = as_messages(value, where, key)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise DataError(f"{where}: {key!r} must hold one assistant message, got roles {[m['role'] for m in messages]}")
        return messages[0]["content"]
    return _string(value, where, key)


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__} ({str(value)[:60]!r})")
    return value


def _unknown(table: Table, what: str, layouts: str) -> str:
    return (f"{table.source} holds no {what} layout we take: its columns are {table.columns}; give {layouts}, "
            "or name your columns with data.*_key")
