"""The token tape of a multi-turn trajectory: every id as held, with where it came from.

The ids the engine sampled are appended exactly as sampled (never decoded and encoded again, which
can change a token split the model chose); only text that is not the model's (the env's and the
tools' messages, and the template's own turn markers) is tokenised, as the difference the template
makes when that message is appended (`rlhf_dist/rollout/chat_probe.py`). The loss mask is exactly
"source is model", and only model tokens carry rollout log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCES = ("prompt", "model", "env", "tool", "template")


@dataclass
class Tape:
    ids: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # the sampled token's log-prob; 0.0 off the model
    prompt_len: int = 0  # the first tokens, the rendered prompt

    @classmethod
    def from_prompt(cls, ids: list[int]) -> Tape:
        tape = cls()
        tape.add(ids, "prompt")
        tape.prompt_len = len(ids)
        return tape

    def add_model(self, ids: list[int], logprobs: list[float]) -> None:
        """A model turn, as the engine sampled it: ids and their log-probs, one each."""
        if len(ids) != len(logprobs):
            raise ValueError(f"{len(ids)} sampled ids but {len(logprobs)} log-probs")
        self.ids += ids
        self.sources += ["model"] * len(ids)
        self.logprobs += [float(lp) for lp in logprobs]

    def add(self, ids: list[int], source: str) -> None:
        """Tokens that are not the model's: never trained on, no log-prob."""
        if source not in SOURCES or source == "model":
            raise ValueError(f"source must be one of {[s for s in SOURCES if s != 'model']}, got {source!r}")
        self.ids += ids
        self.sources += [source] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def loss_mask(self) -> list[int]:
        """1 exactly where the model sampled the token."""
        return [int(s == "model") for s in self.sources]

    @property
    def model_tokens(self) -> int:
        return self.sources.count("model")

    def response(self) -> tuple[list[int], list[int], list[float]]:
        """Everything after the prompt, as one response: ids, loss mask and rollout log-probs."""
        start = self.prompt_len
        return self.ids[start:], self.loss_mask[start:], self.logprobs[start:]

    def count(self, source: str) -> int:
        return self.sources.count(source)
