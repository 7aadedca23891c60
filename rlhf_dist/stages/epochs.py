"""The supervised stages' loop (SFT, reward model, DPO), beside the RL driver: it works on the
handles of one DeepSpeed world's ranks (actors/stage.py, started by launch/) and never starts any.

Each epoch shuffles the training examples, shards them over the ranks, trains, then evaluates on
the held-out split. Per-rank sums come back and are reduced here, so every figure is one of the
whole world whatever its size.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_dist.config.stages import StageConfig
from rlhf_dist.driver.remote_calls import RankGroup
from rlhf_dist.stages.calibration import expected_calibration_error, fit_temperature
from rlhf_dist.stages.stage_data import Examples


@dataclass
class StageResult:
    kind: str
    model_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def train_stage(
    kind: str, cfg: StageConfig, workers: list[Any], examples: Examples, metrics, result: StageResult, tokenizer_path: str
) -> None:
    """Evaluate, train ``cfg.epochs`` epochs, then write the model (with the tokenizer of
    ``tokenizer_path``) to ``result.model_dir``, and for rm its score normalisation beside it."""
    ranks = RankGroup(workers, f"{kind} learner")
    _train(kind, cfg, ranks, examples, metrics, result)
    ranks.all(lambda w: w.save.remote(str(result.model_dir), tokenizer_path), f"{kind} (save)")
    if kind == "rm":
        _write_normalization(result, ranks, examples)


def _shards(items: list[Any], n: int) -> list[list[Any]]:
    return [items[r::n] for r in range(n)]


def _sum(parts: list[dict[str, Any]]) -> dict[str, float]:
    keys = {k for p in parts for k, v in p.items() if not isinstance(v, list)}
    return {k: sum(p.get(k, 0.0) for p in parts) for k in keys}


def _train(kind: str, cfg: StageConfig, ranks: RankGroup, examples: Examples, metrics, result: StageResult) -> None:
    """Evaluate, then train and evaluate each epoch; ``result.history`` grows by one record per
    evaluation (the start, then each epoch), so an interrupted stage can say where it was."""
    ref_train = ref_eval = None
    if kind == "dpo":
        ref_train = _reference(ranks, examples.train)
        ref_eval = _reference(ranks, examples.eval)
    record = _evaluate(kind, ranks, examples, ref_eval)
    metrics.log(0, record)
    result.history.append(record)
    result.metrics.update({f"{k}_start": v for k, v in record.items()})
    rng = random.Random(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        order = list(range(len(examples.train)))
        rng.shuffle(order)
        parts = ranks.map(
            lambda w, s: w.train_epoch.remote([examples.train[i] for i in s], [ref_train[i] for i in s] if ref_train else None),
            _shards(order, len(ranks)),
        )
        sums = _sum(parts)
        record = {f"{kind}/train_loss": _per(sums, "nll_sum" if kind == "sft" else "loss_sum")}
        if kind != "sft":
            record[f"{kind}/train_accuracy"] = _per(sums, "correct")
        record.update(_evaluate(kind, ranks, examples, ref_eval))
        metrics.log(epoch, record)
        result.history.append(record)
        print(f"{kind} epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()))
    result.metrics.update(result.history[-1])


def _per(sums: dict[str, float], key: str) -> float:
    return sums.get(key, 0.0) / max(sums.get("count", 0.0), 1.0)


def _reference(ranks: RankGroup, pairs: list) -> list[tuple[float, float]]:
    shards = _shards(list(range(len(pairs))), len(ranks))
    parts = ranks.map(lambda w, s: w.reference_logprobs.remote([pairs[i] for i in s]), shards, "dpo reference")
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    for s, values in zip(shards, parts):
        for i, v in zip(s, values):
            out[i] = v
    return out


def _evaluate(kind: str, ranks: RankGroup, examples: Examples, ref_eval) -> dict[str, float]:
    if not examples.eval:
        return {}
    parts = ranks.map(
        lambda w, s: w.evaluate.remote([examples.eval[i] for i in s], [ref_eval[i] for i in s] if ref_eval else None),
        _shards(list(range(len(examples.eval))), len(ranks)), f"{kind} evaluation",
    )
    sums = _sum(parts)
    if kind == "sft":
        return {"sft/eval_loss": _per(sums, "nll_sum")}
    record = {f"{kind}/eval_accuracy": _per(sums, "correct"), f"{kind}/eval_margin": _per(sums, "margin_sum")}
    if kind == "dpo":
        # Mean log(pi / pi_ref) of the held-out responses: how far the policy moved on them.
        record["dpo/eval_logratio"] = _per(sums, "logratio_sum")
        record["dpo/gold_preferred_rate"] = _per(sums, "policy_prefers_chosen")
    if kind == "rm":
        record.update(_calibrate([m for p in parts for m in p["margins"]]))
    return record


def _calibrate(margins: list[float]) -> dict[str, float]:
    """Fit T on one half of the held-out pairs and measure ECE on the other (CONTRACTS)."""
    import torch

    if len(margins) < 4:
        return {}
    values = torch.tensor(margins)
    fit_half, measure_half = values[0::2], values[1::2]
    temperature = fit_temperature(fit_half)
    return {
        "rm/temperature": temperature,
        "rm/ece_before": expected_calibration_error(measure_half),
        "rm/ece_after": expected_calibration_error(measure_half, temperature),
    }


def _write_normalization(result: StageResult, ranks: RankGroup, examples: Examples) -> None:
    """Save mean/std of the RM's scores on a reference set (training pairs) beside the model."""
    parts = ranks.map(lambda w, shard: w.score_responses.remote(shard), _shards(examples.train[:512], len(ranks)), "rm")
    scores = [s for part in parts for s in part]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) or 1.0
    stats = {"mean": mean, "std": std, "temperature": result.metrics.get("rm/temperature", 1.0), "num_scores": len(scores)}
    (result.model_dir / "reward_normalization.json").write_text(json.dumps(stats, indent=2))
    result.metrics.update({"rm/score_mean": mean, "rm/score_std": std})
