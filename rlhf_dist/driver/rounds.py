"""One path from requests to graded samples, for training batches and eval alike:
`generate_and_score` samples every request on the generators, then grades the samples on the reward
scorers with their rows' columns, and returns a `ScoredRound`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.data import Prompt
from rlhf_dist.driver.remote_calls import Roles, generate_on, score_on
from rlhf_dist.experience import columns_of
from rlhf_dist.metrics.timing import timed
from rlhf_dist.rewards import RewardResult
from rlhf_dist.rewards.functions import Extras
from rlhf_dist.rollout.requests import Request, Sample

Call = Callable[[Callable[[], Any]], Any]  # wraps one phase's remote work (the driver's fault recovery)


def _now(work: Callable[[], Any]) -> Any:
    return work()


@dataclass
class ScoredRound:
    """One round of requests, answered and graded, in request order. In a multi-turn run a sample
    whose trajectory failed (every attempt) is not graded: its reward is 0 and it is ``failed``."""

    samples: list[Sample]
    rows: list[Prompt]  # the prompt (and its row's columns) each sample answers
    rewards: RewardResult  # (B,) totals, components and gold of the samples

    @property
    def prompt_texts(self) -> list[str]:
        return [row.text for row in self.rows]

    @property
    def response_texts(self) -> list[str]:
        return [s.text for s in self.samples]

    @property
    def failed(self) -> torch.Tensor:
        """(B,) bool: the samples whose trajectory failed (never true in a single-turn run)."""
        return torch.tensor([s.multi is not None and s.multi.failed for s in self.samples], dtype=torch.bool)


def request_for(index: int, sample: int, prompt: Prompt, seed: int) -> Request:
    """The request of sample ``sample`` of prompt ``index``; a multi-turn prompt (one that kept its
    messages) also carries its chat and its row, for the trajectory and its env. The row holds the
    row's columns, and its chat under ``prompt``."""
    if prompt.messages is None:
        return Request(index, sample, prompt.ids, seed)
    return Request(index, sample, prompt.ids, seed, messages=prompt.messages,
                   row={**prompt.columns, "prompt": prompt.messages})


def generate_and_score(roles: Roles, prompts: list[Prompt], requests: list[Request], sampling: SamplingConfig, *,
                       step: int, call: Call = _now, timings: dict[str, float] | None = None,
                       purpose: str = "") -> ScoredRound:
    """Sample ``requests`` (prompt indices into ``prompts``) on ``roles.rollout``, then score them on
    ``roles.reward``. ``call`` wraps each phase, so a fault redoes only the phase it hit; ``timings``
    gets ``generate`` and ``score``; ``purpose`` ("eval") names the calls in errors. Python rewards
    that ask get the responses' token ids and ``step``; in a multi-turn run, also the transcripts and
    turn rewards, and each total gets its trajectory's turn rewards. Failed trajectories are not
    scored."""
    suffix = f" ({purpose})" if purpose else ""
    with timed(timings, "generate"):
        samples = call(lambda: generate_on(roles.rollout, requests, sampling, "rollout" + suffix, step))
    rows = [prompts[s.prompt_index] for s in samples]
    ok = [i for i, s in enumerate(samples) if s.multi is None or not s.multi.failed]
    graded = [samples[i] for i in ok]
    multi = any(s.multi is not None for s in samples)
    extras = Extras([list(s.response_ids) for s in graded], step,
                    [s.multi.transcript for s in graded] if multi else None,
                    [s.multi.turn_rewards for s in graded] if multi else None)
    with timed(timings, "score"):
        if not graded:  # every trajectory failed: nothing to grade (the error budget stops the run)
            rewards = RewardResult(torch.zeros(0), {}, None)
        else:
            rewards = call(lambda: score_on(roles.reward, [rows[i].text for i in ok], [s.text for s in graded],
                                            columns_of([rows[i] for i in ok]), "reward scorer" + suffix, extras))
    if multi:
        rewards = _with_turn_rewards(rewards, graded, ok, len(samples))
    return ScoredRound(samples, rows, rewards)


def _with_turn_rewards(graded: RewardResult, samples: list[Sample], ok: list[int], batch: int) -> RewardResult:
    """The rewards of the whole round from those of its graded samples (rows ``ok``): each total plus
    its trajectory's turn rewards; 0 for the failed samples, which are never trained on."""
    index = torch.tensor(ok, dtype=torch.long)

    def spread(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(batch, dtype=torch.float32).index_copy(0, index, values.float())

    turns = torch.tensor([sum(s.multi.turn_rewards) for s in samples], dtype=torch.float32)
    return RewardResult(
        total=spread(graded.total + turns),
        components={name: spread(values) for name, values in graded.components.items()},
        gold=None if graded.gold is None else spread(graded.gold),
    )
