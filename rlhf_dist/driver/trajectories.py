"""A multi-turn step's trajectories on the driver: their tensors in the batch, their metrics and
samples.jsonl fields, their error records, and the error budget.

Single-turn runs never come here (their samples carry no `TurnInfo`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_dist.models.sequences import right_pad
from rlhf_dist.rollout.attempts import check_error_budget
from rlhf_dist.rollout.requests import Sample
from rlhf_dist.rollout.trajectory import STOPS

STOP_REASONS = (*STOPS, "timeout", "error")  # rollout/stop/<reason>: timeout and error are failed attempts


def turn_tensors(samples: list[Sample], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, width) model mask (1 on sampled tokens) and turn rewards (each at its turn's last model
    token) of the samples' responses, right padded."""
    mask, _ = right_pad([s.multi.model_mask for s in samples], 0, torch.float32, width=width)
    rewards = torch.zeros(len(samples), width)
    for row, sample in enumerate(samples):
        for end, reward in zip(sample.multi.turn_ends, sample.multi.turn_rewards):
            rewards[row, end] += reward
    return mask, rewards


def sample_fields(sample: Sample) -> dict:
    """What a multi-turn row of samples.jsonl adds (CONTRACTS): the transcript, turns, stop, token
    counts and turn rewards."""
    info = sample.multi
    return {"transcript": info.transcript, "turns": info.turns, "stop": info.stop,
            "model_tokens": int(sum(info.model_mask)), "total_tokens": len(info.prompt_ids) + len(sample.response_ids),
            "turn_rewards": list(info.turn_rewards)}


def trajectory_metrics(samples: list[Sample], dropped_groups: int) -> dict[str, float]:
    """The ``rollout/*`` and ``timing/{env,tools}`` metrics of a step's trajectories (failed ones
    included in the error counts and the stop reasons, not in the turn counts)."""
    done = [s for s in samples if not s.multi.failed]
    turns = [s.multi.turns for s in done] or [0]
    count = (lambda key: float(sum(s.multi.counts.get(key, 0) for s in samples)))
    attempts = [e for s in samples for e in s.multi.errors]
    held = sum(len(s.response_ids) for s in done)
    observed = sum(len(s.response_ids) - sum(s.multi.model_mask) for s in done)
    stops = {reason: 0.0 for reason in STOP_REASONS}
    for s in samples:  # a failed sample stops at "timeout" when its last attempt ran out of time
        timed_out = s.multi.failed and s.multi.errors and s.multi.errors[-1]["phase"] == "timeout"
        stops["timeout" if timed_out else s.multi.stop] += 1
    metrics = {
        "rollout/turns_mean": sum(turns) / len(turns),
        "rollout/turns_max": float(max(turns)),
        "rollout/tool_calls_mean": count("tool_calls") / max(1, len(done)),
        "rollout/tool_errors": count("tool_errors"),
        "rollout/tool_timeouts": count("tool_timeouts"),
        "rollout/parse_errors": count("parse_errors"),
        "rollout/env_errors": float(len(attempts)),
        "rollout/error_frac": (len(samples) - len(done)) / max(1, len(samples)),
        "rollout/dropped_groups": float(dropped_groups),
        "rollout/obs_token_frac": observed / max(1, held),
        "timing/env": sum(s.multi.seconds.get("env", 0.0) for s in samples),
        "timing/tools": sum(s.multi.seconds.get("tools", 0.0) for s in samples),
    }
    metrics.update({f"rollout/stop/{reason}": n for reason, n in stops.items()})
    return metrics


def record_errors(path: Path | None, samples: list[Sample]) -> None:
    """Append one line per failed attempt of the samples to ``path`` (RUN_DIR/rollout_errors.jsonl)."""
    records = [e for s in samples if s.multi is not None for e in s.multi.errors]
    if path is None or not records:
        return
    with path.open("a", encoding="utf-8") as out:
        out.writelines(json.dumps(record, default=str) + "\n" for record in records)


def check_failures(samples: list[Sample], group_size: int, max_error_frac: float, first_step: bool, env_name: str,
                   errors_file: Path | None) -> None:
    """Stop the run (`RolloutFailures`) when too many of a step's trajectories failed."""
    infos = [s.multi for s in samples]
    groups = [infos[g:g + group_size] for g in range(0, len(infos), group_size)]
    check_error_budget(groups, max_error_frac, first_step, env_name, str(errors_file or "rollout_errors.jsonl"))
