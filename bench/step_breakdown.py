"""Run the embedded default for N steps and print where the time goes.

    python bench/step_breakdown.py [--steps N] [key=value ...]

Prints the mean seconds per phase (and its share of the step), tokens/s, the orchestration
overhead (step time when no actor was computing) and the weight-sync bandwidth. Steps before
--warmup are left out (the first generate call warms vLLM up).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from statistics import mean

from launch.run import train
from rlhf_dist.config import load_config
from rlhf_dist.driver import PHASES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(None, [f"steps={args.steps}", "checkpoint.save_final=false", *args.overrides])
    with tempfile.TemporaryDirectory() as tmp:
        records = train(cfg, Path(tmp) / "run", progress=False).records[args.warmup :]
    step = mean(r["timing/step"] for r in records)
    print(f"\n== step breakdown: {len(records)} steps after {args.warmup} warm-up, "
          f"{cfg.rollout.num_workers} rollout / {cfg.learner.num_workers} learner workers, ZeRO-{cfg.learner.zero_stage}")
    print(f"{'phase':<12}{'mean s':>10}{'share':>9}")
    for phase in PHASES:
        seconds = mean(r[f"timing/{phase}"] for r in records)
        print(f"{phase:<12}{seconds:>10.4f}{seconds / step:>9.1%}")
    print(f"{'step':<12}{step:>10.4f}")
    print(f"tokens/s (response tokens / step time): {mean(r['throughput/tokens_per_s'] for r in records):.0f}")
    print(f"orchestration overhead (no actor computing): {mean(r['timing/overhead_frac'] for r in records):.1%} of step time")
    print(f"sync: {mean(r['sync/mb_per_s'] for r in records):.1f} MB/s, "
          f"{mean(r['sync/seconds'] for r in records):.4f} s per sync incl. checksums "
          f"({mean(r['timing/sync'] for r in records) / step:.1%} of step time with the probe check)")
    print(f"logprob mismatch (max over steps): {max(r['rollout/logprob_abs_diff'] for r in records):.2e}")


if __name__ == "__main__":
    main()
