"""What held-out evaluation costs: the default run with and without `eval`.

    python bench/eval_overhead.py [--steps N] [key=value ...]

Runs the embedded default twice, once as is and once with CONTRACTS' eval setting
(``eval.every=5 eval.max_prompts=64 eval.samples_per_prompt=1``, 64 prompts held out of the
builtin task), and prints the wall time of the steps of each (start-up excluded), the seconds the
evaluations took (``timing/eval``) and the overhead. Steps before --warmup are left out of the step
means (the first generate warms vLLM up); the eval after the last step is counted in the total.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import mean, median

from launch.run import train
from rlhf_dist.config import load_config

EVAL = ["eval.every=5", "eval.holdout=64", "eval.max_prompts=64", "eval.samples_per_prompt=1"]


def timed_run(overrides: list[str]) -> tuple[float, list[dict]]:
    cfg = load_config(None, ["checkpoint.save_final=false", "checkpoint.every=0", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        records = train(cfg, Path(tmp) / "run", progress=False).records
        total = time.perf_counter() - started
    return total, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    base = [f"steps={args.steps}", *args.overrides]
    _, plain = timed_run(base)
    _, with_eval = timed_run(base + EVAL)
    steps_plain = [r for r in plain if "timing/step" in r]
    steps_eval = [r for r in with_eval if "timing/step" in r]
    # The final eval row has no timing/step; time it as the eval phases' median.
    evals = [r["timing/eval"] for r in steps_eval if "timing/eval" in r]
    final_eval = median(evals) if evals else 0.0
    train_plain = sum(r["timing/step"] for r in steps_plain)
    train_eval = sum(r["timing/step"] for r in steps_eval) + final_eval
    print(f"\n== eval overhead: {args.steps} steps of the default config; eval: {' '.join(EVAL)}")
    print(f"steps without eval         {train_plain:8.2f} s  (median step {median(r['timing/step'] for r in steps_plain):.3f} s)")
    print(f"steps with eval            {train_eval:8.2f} s  ({len(evals) + 1} evaluations, "
          f"median {final_eval:.3f} s each)")
    print(f"eval seconds               {sum(evals) + final_eval:8.2f} s")
    print(f"overhead                   {train_eval / train_plain - 1:8.1%}  (target <= 15%)")
    late = [r["timing/step"] for r in steps_eval[args.warmup:] if "timing/eval" not in r]
    print(f"mean step without an eval  {mean(late):8.3f} s  (same run; vs {mean(r['timing/step'] for r in steps_plain[args.warmup:]):.3f} s)")


if __name__ == "__main__":
    main()
