"""One path from requests to graded samples, for training batches and eval alike:
`generate_and_score` samples every request on the generators, then grades the samples on the reward
scorers with their rows' columns, and returns a `ScoredRound`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    """One round of requests, answered and graded, in request order."""

    samples: list[Sample]
    rows: list[Prompt]  # the prompt (and its row's columns) each sample answers
    rewards: RewardResult  # (B,) totals, components and gold of the samples

    @property
    def prompt_texts(self) -> list[str]:
        return [row.text for row in self.rows]

    @property
    def response_texts(self) -> list[str]:
        return [s.text for s in self.samples]


def generate_and_score(roles: Roles, prompts: list[Prompt], requests: list[Request], sampling: SamplingConfig, *,
                       step: int, call: Call = _now, timings: dict[str, float] | None = None,
                       purpose: str = "") -> ScoredRound:
    """Sample ``requests`` (prompt indices into ``prompts``) on ``roles.rollout``, then score them on
    ``roles.reward``. ``call`` wraps each phase, so a fault redoes only the phase it hit; ``timings``
    gets ``generate`` and ``score``; ``purpose`` ("eval") names the calls in errors. Python rewards
    that ask get the responses' token ids and ``step``."""
    suffix = f" ({purpose})" if purpose else ""
    with timed(timings, "generate"):
        samples = call(lambda: generate_on(roles.rollout, requests, sampling, "rollout" + suffix))
    rows = [prompts[s.prompt_index] for s in samples]
    extras = Extras([list(s.response_ids) for s in samples], step)
    with timed(timings, "score"):
        rewards = call(lambda: score_on(roles.reward, [r.text for r in rows], [s.text for s in samples],
                                        columns_of(rows), "reward scorer" + suffix, extras))
    return ScoredRound(samples, rows, rewards)
