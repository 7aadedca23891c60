"""What a rollout engine is asked and what it answers: `Request`s in, `Sample`s out, seeded per request."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass
class Request:
    prompt_index: int  # dataset index of the prompt
    sample_index: int  # 0 .. samples_per_prompt - 1
    prompt_ids: list[int]
    seed: int


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    response_ids: list[int]  # includes the eos token when the model stopped by itself
    logprobs: list[float]  # one per response token
    text: str  # decoded response without special tokens
    truncated: bool = False  # cut off at max_new_tokens rather than stopped by the model


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
