"""What a rollout engine is asked and what it answers: `Request`s in, `Sample`s out, seeded per request.
A multi-turn run's samples also carry their trajectory (`TurnInfo`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class Request:
    prompt_index: int  # dataset index of the prompt
    sample_index: int  # 0 .. samples_per_prompt - 1
    prompt_ids: list[int]
    seed: int
    max_tokens: int | None = None  # at most this many new tokens (below sampling.max_new_tokens); None = no cap
    messages: list[dict] | None = None  # multi-turn: the prompt's chat, which the trajectory extends
    row: dict | None = None  # multi-turn: the dataset row the env is built with


@dataclass
class TurnInfo:
    """A multi-turn sample's trajectory: what the learner, the rewards and the logs need of it. The
    sample's ``response_ids`` are every held token after the prompt (model, env, tool and template
    tokens); ``model_mask`` marks the model's, and only those carry log-probs."""

    prompt_ids: list[int]  # the trajectory's prompt: the request's, plus what the env's reset added
    model_mask: list[int]  # one per response token: 1 where the model sampled it
    transcript: list[dict]  # the {role, content} messages, prompt included
    turns: int  # model turns
    stop: str  # done | max_turns | max_tokens | no_tool_call; "error" when every attempt failed
    turn_rewards: list[float]  # the env's reward of each model turn
    turn_ends: list[int]  # response index of each turn's last model token
    counts: dict[str, int] = field(default_factory=dict)  # tool_calls, tool_errors, tool_timeouts, parse_errors
    seconds: dict[str, float] = field(default_factory=dict)  # env, tools, and when it finished (finished_at)
    errors: list[dict] = field(default_factory=list)  # one record per failed attempt (rollout_errors.jsonl)

    @property
    def failed(self) -> bool:
        return self.stop == "error"


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    response_ids: list[int]  # includes the eos token when the model stopped by itself
    logprobs: list[float]  # one per response token
    text: str  # decoded response without special tokens; multi-turn: the last assistant message
    truncated: bool = False  # cut off at max_new_tokens rather than stopped by the model
    multi: TurnInfo | None = None  # multi-turn runs: the trajectory


def request_seed(run_seed: int, step: int, prompt_index: int, sample_index: int, stream: str = "") -> int:
    """A sampling seed fixed by (run, step, prompt, sample): reruns and resumes sample the same.
    ``stream`` keeps other samplers of the same step apart (``"eval"``); "" is the training stream."""
    key = f"{run_seed}/{step}/{prompt_index}/{sample_index}" + (f"/{stream}" if stream else "")
    digest = hashlib.blake2b(key.encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little") & 0x7FFFFFFF


def prefill_batches(requests: list[Request], max_seqs: int, max_tokens: int) -> list[list[Request]]:
    """Consecutive runs of ``requests`` with at most ``max_seqs`` requests and ``max_tokens`` prompt
    tokens each (a prompt longer than ``max_tokens`` alone gets a run of its own)."""
    batches: list[list[Request]] = []
    current: list[Request] = []
    tokens = 0
    for r in requests:
        if current and (len(current) == max_seqs or tokens + len(r.prompt_ids) > max_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(r)
        tokens += len(r.prompt_ids)
    if current:
        batches.append(current)
    return batches
