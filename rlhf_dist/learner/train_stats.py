"""What a learner rank's `train` returns (`TrainStats`), and the one function that makes the step's
metrics of every rank's (`reduce_ranks`).

Statistics that only add up over ranks travel as sums, counts and maxima (the rollout/learner
log-prob mismatch, the importance weights, the memory peak); the driver divides once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_dist.algorithms import ISStats


@dataclass
class TrainStats:
    means: dict[str, float]  # policy/*, critic/*, train/*: over the update's mini-batches; the step averages ranks
    response_tokens: float  # response tokens of this rank's shard
    logprob_abs_diff_sum: float  # sum over those tokens of |learner - rollout| log-prob
    logprob_abs_diff_max: float
    importance: ISStats | None = None  # sums and counts of the importance weights (is_correction != none)
    memory_peak_bytes: float | None = None  # CUDA learners: the peak allocation since the process began


def reduce_ranks(ranks: list[TrainStats]) -> dict[str, float]:
    """The step's training metrics from every rank's `TrainStats`: means averaged over ranks, the
    mismatch per token over all ranks' tokens, maxima over ranks, importance weights over all tokens."""
    metrics = {name: sum(r.means[name] for r in ranks) / len(ranks) for name in ranks[0].means}
    tokens = sum(r.response_tokens for r in ranks)
    metrics["rollout/logprob_abs_diff"] = sum(r.logprob_abs_diff_sum for r in ranks) / max(tokens, 1.0)
    metrics["rollout/logprob_abs_diff_max"] = max(r.logprob_abs_diff_max for r in ranks)
    if ranks[0].importance is not None:
        total = ranks[0].importance
        for r in ranks[1:]:
            total = total + r.importance
        metrics.update(total.metrics())
    if ranks[0].memory_peak_bytes is not None:  # GPU learners: the largest rank's peak allocation
        metrics["memory/learner_peak_gib"] = max(r.memory_peak_bytes for r in ranks) / 2**30
    return metrics
