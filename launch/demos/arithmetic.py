"""`rlhf-dist demo arithmetic`: the RLVR recipe end to end on the tiny model.

A synthetic dataset of additions ``a+b=`` (chat prompts plus an ``answer`` column, a train split
and a disjoint test split, both Parquet under the run dir) -> SFT on worked demonstrations ->
GRPO with the verifiable `math` rule, evaluated on the test split at step 0 (the SFT model), during
training, and at the end. Accuracy is the mean correctness of responses sampled at the training
temperature (``eval/pass@1``); both ends go to ``DIR/summary.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from launch.console import outputs_line
from launch.run import prepare_run_dir, train
from launch.stages import run_stage
from rlhf_dist.checkpoints.run_lock import releases_run_dirs
from rlhf_dist.config import load_config
from rlhf_dist.config.stages import StageConfig
from rlhf_dist.data.synthetic import arithmetic_rows, arithmetic_split
from rlhf_dist.models.tiny import make_tiny


@dataclass(frozen=True)
class Size:
    high: int  # operands in 0..high
    test_size: int  # held-out problems (x samples_per_prompt eval samples)
    demos: int  # SFT demonstrations, drawn from the train problems
    sft_epochs: int
    rl_steps: int
    eval_every: int


FULL = Size(high=29, test_size=200, demos=3000, sft_epochs=5, rl_steps=60, eval_every=10)
SMALL = Size(high=29, test_size=200, demos=3000, sft_epochs=5, rl_steps=20, eval_every=20)
EVAL_SAMPLES = 4  # per test prompt: 200 x 4 = 800 graded samples per evaluation
TEMPERATURE = 1.0


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@releases_run_dirs
def run_arithmetic_demo(run_dir: Path, seed: int = 0, small: bool = False) -> dict:
    run_dir = prepare_run_dir(run_dir)
    size = SMALL if small else FULL
    started = time.perf_counter()
    train_pairs, test_pairs = arithmetic_split(0, size.high, size.test_size, seed)
    data = run_dir / "data"
    data.mkdir(exist_ok=True)
    _write_parquet(data / "train.parquet", arithmetic_rows(train_pairs, with_answer_message=False))
    _write_parquet(data / "test.parquet", arithmetic_rows(test_pairs, with_answer_message=False))
    print(f"== demo arithmetic: a+b with a, b in 0..{size.high}; {len(train_pairs)} train / {len(test_pairs)} "
          f"test problems ({data}/train.parquet, test.parquet); SFT on {size.demos} demonstrations, "
          f"GRPO {size.rl_steps} steps with the math rule")

    base = make_tiny(run_dir / "tiny-model", seed=seed).policy
    demos = arithmetic_rows(random.Random(seed).choices(train_pairs, k=size.demos), with_answer_message=True)
    sft_cfg = StageConfig(
        name="sft", seed=seed, epochs=size.sft_epochs, model={"path": str(base)},
        data={"max_length": 32, "eval_fraction": 0.05},
        learner={"mini_batch_size": 32, "micro_batch_size": 16, "optimizer": {"lr": 1e-3}},
        logging={"tensorboard": False},
    )
    sft = run_stage("sft", sft_cfg, run_dir / "sft", rows=demos)

    grpo_cfg = load_config(None, [
        "name=arithmetic", f"seed={seed}", f"steps={size.rl_steps}", "algorithm.name=grpo",
        f"model.path={sft.model_dir}", f"data.prompts={data / 'train.parquet'}",
        "reward.components=[{type: rule, name: math}]", "reward.gold=null",
        "rollout.prompts_per_step=32", "rollout.samples_per_prompt=8",
        f"rollout.sampling.temperature={TEMPERATURE}", "rollout.sampling.max_new_tokens=4",
        "learner.mini_batch_size=64", "learner.micro_batch_size=32", "learner.optimizer.lr=1e-4",
        "algorithm.kl.coef=0.001", "algorithm.kl.kind=k3", "algorithm.kl.mode=loss",
        f"eval.every={size.eval_every}", f"eval.prompts={data / 'test.parquet'}",
        f"eval.max_prompts={size.test_size}", f"eval.samples_per_prompt={EVAL_SAMPLES}",
        f"eval.temperature={TEMPERATURE}", "checkpoint.every=0", "logging.samples_every=0",
        "logging.tensorboard=false",
    ])
    records = train(grpo_cfg, run_dir / "grpo", progress=False).records
    curve = [(r["step"], r["eval/pass@1"]) for r in records if "eval/pass@1" in r]
    n = size.test_size * EVAL_SAMPLES
    sft_acc, rl_acc = curve[0][1], curve[-1][1]
    summary = {
        "sft_accuracy": sft_acc,
        "rl_accuracy": rl_acc,
        "gain": rl_acc - sft_acc,
        # Standard error of the gain, treating the 2 x n graded samples as independent.
        "gain_stderr": math.sqrt(sft_acc * (1 - sft_acc) / n + rl_acc * (1 - rl_acc) / n),
        "eval_samples": n,
        "temperature": TEMPERATURE,
        "curve": [{"step": s, "accuracy": a} for s, a in curve],
        "sft_eval_loss": sft.history[-1].get("sft/eval_loss"),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_text(summary, run_dir))
    return summary


def summary_text(s: dict, run_dir: Path) -> str:
    curve = "  ".join(f"{p['step']}:{p['accuracy']:.3f}" for p in s["curve"])
    return "\n".join([
        "",
        "== demo arithmetic summary",
        f"test accuracy after SFT   {s['sft_accuracy']:.3f}  ({s['eval_samples']} samples at T={s['temperature']:g})",
        f"test accuracy after GRPO  {s['rl_accuracy']:.3f}  ({s['gain']:+.3f}, standard error {s['gain_stderr']:.3f})",
        f"accuracy by step          {curve}",
        f"time                      {s['seconds']:.0f} s",
        outputs_line(run_dir, {"grpo/": "the GRPO run, with eval.jsonl"}),
    ])
