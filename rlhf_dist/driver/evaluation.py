"""Held-out evaluation during RL: the rollout engines answer the eval prompts at their current
weights, the reward scorers grade the answers, and the driver logs ``eval/*`` in the step's row.

Metrics (CONTRACTS):
    eval/reward_mean        mean total reward over every eval sample
    eval/gold_mean          mean gold reward, when a gold is configured
    eval/pass@1, pass@k     when the graded reward (gold if any, else the total) is 0/1-valued:
                            the unbiased estimator of Chen et al. 2021 with n = k = samples_per_prompt
    eval/response_len_mean  response tokens per sample

Every sample goes to ``RUN_DIR/eval.jsonl`` as ``{step, prompt, response, reward[, gold]}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_dist.config import RunConfig
from rlhf_dist.config.schema import SamplingConfig
from rlhf_dist.data import Prompt
from rlhf_dist.driver.remote_calls import Roles
from rlhf_dist.driver.rounds import generate_and_score, request_for
from rlhf_dist.driver.trajectories import sample_fields
from rlhf_dist.errors import UserError
from rlhf_dist.rollout.requests import request_seed


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n``
    samples, ``c`` of them correct, is correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0.0) | (values == 1.0)))


def eval_metrics(graded: np.ndarray, k: int) -> dict[str, float]:
    """pass@1 and pass@k of a (prompts, n) array of 0/1 grades; {} when they are not 0/1."""
    if not is_binary(graded):
        return {}
    n = graded.shape[1]
    correct = graded.sum(axis=1).astype(int)
    return {
        "eval/pass@1": float(np.mean([pass_at_k(n, int(c), 1) for c in correct])),
        "eval/pass@k": float(np.mean([pass_at_k(n, int(c), k) for c in correct])),
    }


def split_holdout(prompts: list[Prompt], holdout: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Hold ``holdout`` prompts out of training, chosen by a seeded permutation; returns (train,
    held out), each re-indexed from 0 so that indices stay positions in its own list."""
    if holdout >= len(prompts):
        raise UserError(
            f"eval.holdout={holdout} would hold out all {len(prompts)} prompts of data.prompts; "
            "hold out fewer, or give eval.prompts"
        )
    held = set(np.random.default_rng([seed, 7]).permutation(len(prompts))[:holdout].tolist())
    train = [p for i, p in enumerate(prompts) if i not in held]
    test = [p for i, p in enumerate(prompts) if i in held]
    reindex = lambda part: [dataclasses.replace(p, index=i) for i, p in enumerate(part)]  # noqa: E731
    return reindex(train), reindex(test)


class Evaluator:
    """Runs `eval` at the steps it is due, on the run's rollout and reward actors."""

    def __init__(self, cfg: RunConfig, prompts: list[Prompt], roles: Roles, run_dir: Path | None, metrics=None):
        self.cfg, self.roles, self.metrics = cfg, roles, metrics
        self.prompts = prompts[: cfg.eval.max_prompts]
        self.sampling = SamplingConfig(
            temperature=cfg.eval.temperature, max_new_tokens=cfg.rollout.sampling.max_new_tokens
        )
        self.path = run_dir / "eval.jsonl" if run_dir is not None else None

    @property
    def enabled(self) -> bool:
        return self.cfg.eval.every > 0 and bool(self.prompts)

    def due(self, step: int) -> bool:
        """At step 0 and every ``eval.every`` steps (the end-of-run eval is called by the driver)."""
        return self.enabled and step % self.cfg.eval.every == 0

    def run(self, step: int) -> dict[str, float]:
        """Evaluate the generators' current weights; returns the ``eval/*`` metrics."""
        k = self.cfg.eval.samples_per_prompt
        requests = [
            request_for(i, s, p, request_seed(self.cfg.seed, step, i, s, stream="eval"))
            for i, p in enumerate(self.prompts)
            for s in range(k)
        ]
        scored = generate_and_score(self.roles, self.prompts, requests, self.sampling, step=step, purpose="eval")
        samples, texts, result = scored.samples, scored.prompt_texts, scored.rewards
        total = result.total.numpy()
        gold = result.gold.numpy() if result.gold is not None else None
        metrics = {
            "eval/reward_mean": float(total.mean()),
            "eval/response_len_mean": float(np.mean([len(s.response_ids) for s in samples])),
        }
        if gold is not None:
            metrics["eval/gold_mean"] = float(gold.mean())
        if samples and samples[0].multi is not None:  # failed trajectories score 0 here, and are counted
            metrics["eval/error_frac"] = float(scored.failed.float().mean())
        graded = (gold if gold is not None else total).reshape(len(self.prompts), k)
        metrics.update(eval_metrics(graded, k))
        self.write_samples(step, texts, samples, total, gold)
        return metrics

    def write_samples(self, step: int, prompts: list[str], samples: list[Any], total, gold) -> None:
        rows = []
        for i, (prompt, sample) in enumerate(zip(prompts, samples)):
            rows.append({"step": step, "prompt": prompt, "response": sample.text, "reward": float(total[i])})
            if sample.multi is not None and not sample.multi.failed:
                rows[-1].update(sample_fields(sample))
            if gold is not None:
                rows[-1]["gold"] = float(gold[i])
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
        if self.metrics is not None:  # a table for the sinks that show tables (W&B)
            self.metrics.log_table("eval_samples", step, rows)
