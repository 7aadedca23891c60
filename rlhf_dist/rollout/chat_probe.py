"""What a chat template writes around a turn, found once before any actor starts.

A multi-turn trajectory holds the model's sampled ids as they are (`tape.py`), so only two things are
ever rendered: what the template writes after an assistant turn (its end-of-turn marker, and any
separator the model never samples, such as Qwen's ``\\n`` after ``<|im_end|>``), and what appending
an env or tool message writes (the message with its role markup, then the next generation prompt).
Both are found as differences between renderings of a fixed probe conversation, so that no text the
model wrote is ever re-tokenised.

The probe also checks that appending a message extends what was rendered before (else no suffix can
be taken: refused), and whether the template rewrites earlier turns (Qwen3 drops past ``<think>``
blocks): such a template is still usable, since training uses the tokens the model actually saw,
and the probe says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rlhf_dist.errors import UserError

_USER, _REPLY = "Probe question 17?", "Probe answer 42."
_THOUGHT = "<think>probe thought</think>"


@dataclass(frozen=True)
class TemplateProbe:
    tokenizer: Any
    template: str | None
    turn_end: list[int]  # ids the template writes after an assistant message's text
    rewrites_history: bool  # earlier turns render differently once a later turn follows
    tools: list[dict] | None = None

    def after_model_turn(self, sampled: list[int]) -> list[int]:
        """The template's ids that must follow a model turn that ended with ``sampled``: the end-of-turn
        marker minus what the model already sampled of it (a stop at eos samples its first token)."""
        end = self.turn_end
        for k in range(min(len(end), len(sampled)), 0, -1):
            if sampled[-k:] == end[:k]:
                return end[k:]
        return end

    def message_ids(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """``(message ids, generation-prompt ids)`` that appending ``messages`` after an assistant turn
        writes: the messages with their role markup, then the opening of the next assistant turn.
        Envs often repeat themselves: the answer for the same messages is remembered."""
        key = json.dumps(messages, sort_keys=True, default=str)
        cache = self._message_cache
        if key not in cache:
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = self._message_ids(messages)
        message, opening = cache[key]
        return list(message), list(opening)

    @property
    def _message_cache(self) -> dict:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_cache", cache)  # a frozen dataclass: the cache is not part of its value
        return cache

    def _message_ids(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        base = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}]
        before = self._render(base, generation_prompt=False)
        closed = self._render(base + messages, generation_prompt=False)
        opened = self._render(base + messages, generation_prompt=True)
        if not closed.startswith(before) or not opened.startswith(closed):
            raise UserError("the chat template does not extend a conversation when a message is appended; "
                            "multi-turn rollouts need one that does (set data.chat_template)")
        return self._ids(closed[len(before):]), self._ids(opened[len(closed):])

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """A whole prompt (no model text in it), rendered with the generation prompt."""
        return self._ids(self._render(messages, generation_prompt=True))

    def summary(self) -> str:
        """One short paragraph for the console: the tokens found, and what they mean for training."""
        shown = self.tokenizer.convert_ids_to_tokens(self.turn_end)
        message, opening = self.message_ids([{"role": "user", "content": "OBS"}])
        lines = [f"chat template: an assistant turn ends with {shown} (mask 0 past what the model samples); "
                 f"an observation adds {len(message)} tokens, the next turn opens with "
                 f"{self.tokenizer.convert_ids_to_tokens(opening)}"]
        if self.rewrites_history:
            lines.append("it rewrites earlier turns (e.g. drops past <think>): trajectories train on the tokens "
                         "the model saw, not on a re-rendering")
        return "; ".join(lines)

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tools=self.tools, add_generation_prompt=generation_prompt,
                tokenize=False,
            )
        except Exception as exc:
            raise UserError(f"the chat template failed on the probe conversation: {exc}") from None

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def probe_template(tokenizer: Any, template: str | None = None, tools: list[dict] | None = None) -> TemplateProbe:
    """Probe ``template`` (default: the tokenizer's); a template we cannot use is a `UserError`."""
    if not (template or getattr(tokenizer, "chat_template", None)):
        raise UserError("multi-turn rollouts need a chat template: the tokenizer has none and data.chat_template "
                        "is not set")
    probe = TemplateProbe(tokenizer, template, [], False, tools)
    user = [{"role": "user", "content": _USER}]
    opened = probe._render(user, generation_prompt=True)
    replied = probe._render(user + [{"role": "assistant", "content": _REPLY}], generation_prompt=False)
    if not replied.startswith(opened + _REPLY):
        raise UserError("the chat template does not write an assistant reply after its generation prompt as it "
                        "is; multi-turn rollouts need one that does (set data.chat_template)")
    turn_end = probe._ids(replied[len(opened) + len(_REPLY):])
    # A later turn must not change how an earlier one renders; a think-stripping template does.
    thought = user + [{"role": "assistant", "content": _THOUGHT + _REPLY}]
    then = thought + [{"role": "user", "content": _USER}]
    rewrites = not probe._render(then, generation_prompt=True).startswith(probe._render(thought, generation_prompt=False))
    return TemplateProbe(tokenizer, template, turn_end, rewrites, tools)
