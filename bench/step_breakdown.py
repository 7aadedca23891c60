"""Run the embedded default for N steps and print where the time goes.

    python bench/step_breakdown.py [--steps N] [--warmup W] [key=value ...]
    python bench/step_breakdown.py --compare [--steps N] [--warmup W] [key=value ...]

Prints the mean seconds per phase (and its share of the step), tokens/s, the orchestration
overhead (step time when no actor was computing) and the weight-sync bandwidth. Steps before
--warmup are left out (the first generate call warms vLLM up). Defaults: 10 steps, 2 warm-up.

--compare runs the default three times, each a fresh run (the key=value overrides go to all):
on-policy, ``rollout.async_steps=1`` and the token budget
``learner.max_tokens_per_micro_batch=384``, and prints each one's phase times, step time, tokens/s,
overhead, padding and final gold, with its ratio to on-policy. It then sends the on-policy run's
requests, on the tiny model it built, straight to the engines (bench/raw_engine.py, in a process
of its own with our actors' environment): vLLM's ``LLM.generate`` and transformers' ``generate``,
beside our engine classes on the same requests, and prints our generate phase over the raw engine.
Defaults with --compare: 20 steps, 3 warm-up (three runs of about 1-2 min each on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean, median

from launch.run import train
from rlhf_dist.config import RunConfig, load_config
from rlhf_dist.driver.loop import PHASES

VARIANTS = (
    ("on-policy", []),
    ("async_steps=1", ["rollout.async_steps=1"]),
    ("token budget", ["learner.max_tokens_per_micro_batch=384"]),
)
ASYNC_PHASES = ("logprobs", "rollout_wait")  # the proximal log-probs; the wait for the background batch
OVERLAPPED = ("generate", "score", "reference")  # under async: in the background thread, during train
GOLD_STEPS = 3  # training gold: the mean of the last steps' reward/gold_mean
# Under async the training gold of step t is that of policy t-1 (the batch's sampler): the final
# policies are compared by an eval after the last sync, sampled like training, on held-out prompts.
EVAL = ["eval.holdout=32", "eval.temperature=1.0", "eval.samples_per_prompt=4"]
ASYNC_TARGET, GOLD_TOLERANCE, OVERHEAD_TARGET, WRAPPER_TARGET = 0.80, 0.05, 0.05, 1.2


def run_default(steps: int, overrides: list[str], run_dir: Path) -> tuple[RunConfig, list[dict]]:
    """The embedded default (examples/tiny.yaml) for ``steps`` steps; the records of its steps."""
    cfg = load_config(None, [f"steps={steps}", "checkpoint.save_final=false", *overrides])
    records = train(cfg, run_dir, progress=False).records
    return cfg, [r for r in records if "timing/step" in r]  # (an eval-only row has no step time)


# ----------------------------------------------------------------------------- one run


def breakdown(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, records = run_default(args.steps, args.overrides, Path(tmp) / "run")
    records = records[args.warmup :]
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


# ----------------------------------------------------------------------------- --compare


def figures(records: list[dict], warmup: int) -> dict[str, tuple[float, str]]:
    """A run's figures, each with its format: phase means and step times over the steps after
    ``warmup``, gold over the last `GOLD_STEPS` steps."""
    timed = records[warmup:]
    out: dict[str, tuple[float, str]] = {}
    for phase in (*PHASES, *ASYNC_PHASES):
        seen = [r[f"timing/{phase}"] for r in timed if f"timing/{phase}" in r]
        if seen:
            out[f"{phase} mean s"] = (mean(seen), "{:.4f}")
    steps = [r["timing/step"] for r in timed]
    out["step median s"] = (median(steps), "{:.4f}")
    out["step mean s"] = (mean(steps), "{:.4f}")
    out["tokens/s"] = (mean(r["throughput/tokens_per_s"] for r in timed), "{:.0f}")
    out["overhead"] = (mean(r["timing/overhead_frac"] for r in timed), "{:.1%}")
    if "train/padding_frac" in timed[0]:
        out["padding_frac"] = (mean(r["train/padding_frac"] for r in timed), "{:.1%}")
    out[f"gold (last {GOLD_STEPS})"] = (mean(r["reward/gold_mean"] for r in records[-GOLD_STEPS:]), "{:.3f}")
    out["staleness max"] = (max(r.get("rollout/staleness_max", 0.0) for r in records), "{:.0f}")
    return out


def print_comparison(runs: dict[str, dict[str, tuple[float, str]]], steps: int, warmup: int) -> None:
    base = runs[VARIANTS[0][0]]
    names = [name for name, _ in VARIANTS]
    print(f"\n== compare: the default config (examples/tiny.yaml), {steps} steps each, phase and step times over "
          f"the {steps - warmup} after {warmup} warm-up; ratio = figure / on-policy")
    print(f"{'':<21}{names[0]:>10}" + "".join(f"{n:>22}" for n in names[1:]))
    keys = list(dict.fromkeys(k for figs in runs.values() for k in figs))
    for key in keys:
        mark = " *" if key.split()[0] in OVERLAPPED else ""
        ref = base.get(key)
        row = f"{key + mark:<21}{_cell(ref):>10}"
        for name in names[1:]:
            value = runs[name].get(key)
            # No ratio to a figure that prints as zero (values: a no-op without a critic).
            shown = value is not None and ref is not None and float(_cell(ref).rstrip("%")) != 0
            row += f"{_cell(value):>14}{f'{value[0] / ref[0]:.2f}x' if shown else '-':>8}"
        print(row)
    print("* under async_steps=1, generate, score and reference run in a background thread while the learners train:\n"
          "  their times overlap train and are not part of the step; the step waits for them as rollout_wait.\n"
          "  logprobs is the learners' proximal log-probs pass, which async adds.")


def _cell(value: tuple[float, str] | None) -> str:
    return "-" if value is None else value[1].format(value[0])


def time_raw_engines(model: str, steps: int, warmup: int, overrides: list[str], out: Path) -> dict | None:
    """bench/raw_engine.py in a process of its own, with the environment our actors get (one
    torch thread); its timings, or None (and the end of its output) when it failed."""
    from actors.shell import actor_env

    env = {**os.environ, **actor_env(), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, str(Path(__file__).with_name("raw_engine.py")), "--model", model, "--out", str(out),
           "--steps", str(steps), "--warmup", str(warmup), *overrides]
    print(f"\n== timing the raw engines: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:  # the runs' comparison is still worth printing
        print(f"bench/raw_engine.py failed (exit {done.returncode}); the end of its output:\n{done.stderr[-3000:]}")
        return None
    return json.loads(out.read_text())


def print_generate(raw: dict, on_policy: list[dict], cfg: RunConfig, warmup: int) -> tuple[float, float, float]:
    """Our generate phase and engine classes against the raw engines on the same requests; returns
    our generate phase / raw vLLM, our actor through Ray / raw vLLM and HFEngine / raw transformers
    (median seconds per call)."""
    timed = on_policy[warmup:]
    phase = median(r["timing/generate"] for r in timed)
    phase_tokens = mean(r["rollout/response_len_mean"] for r in timed) * raw["requests_per_call"]
    r = cfg.rollout
    print(f"\n== generate, the same requests: {raw['requests_per_call']} per call ({r.prompts_per_step} prompts x "
          f"{r.samples_per_prompt} samples, max_new_tokens {r.sampling.max_new_tokens}, temperature "
          f"{r.sampling.temperature:g}, seeded), median of {raw['vllm']['calls']} calls after {warmup} warm-up")
    print(f"{'':<52}{'median s':>9}{'tokens/call':>13}{'vs raw':>8}")
    vllm, hf = raw["vllm"]["median_s"], raw["hf"]["median_s"]
    rows = [  # (what, its timing, the raw engine's median s it is compared with)
        ("raw vLLM LLM.generate (one process, no Ray)", raw["vllm"], vllm),
        ("our VLLMEngine.generate (one process, no Ray)", raw["ours_vllm"], vllm),
        (f"our RolloutWorker through Ray (actor at nice {raw['ray_worker_nice']})", raw["ours_vllm_ray"], vllm),
        (f"our generate phase (on-policy run, {cfg.rollout.engine})", {"median_s": phase, "mean_tokens": phase_tokens}, vllm),
        ("raw transformers generate (batch 64, no Ray)", raw["hf"], hf),
        ("our HFEngine.generate (one process, no Ray)", raw["ours_hf"], hf),
    ]
    for label, timing, ref in rows:
        print(f"{label:<52}{timing['median_s']:>9.4f}{timing['mean_tokens']:>13.0f}{timing['median_s'] / ref:>7.2f}x")
    print(f"(all but the run's phase take turns on each step's requests, in the same minutes, in one bench process at\n"
          f" nice {raw['bench_nice']} (and its Ray actor); the run's phase was timed by its driver minutes earlier, at that\n"
          f" step's weights: its tokens/call may differ. Ray runs actors at nice {raw['ray_worker_nice']}: on a loaded machine "
          f"they get less CPU)")
    return phase / vllm, raw["ours_vllm_ray"]["median_s"] / vllm, raw["ours_hf"]["median_s"] / hf


def print_targets(runs: dict[str, dict[str, tuple[float, str]]], ratios: tuple[float, float, float] | None,
                  engine: str) -> None:
    on, asy, budget = runs["on-policy"], runs["async_steps=1"], runs["token budget"]
    gold = f"gold (last {GOLD_STEPS})"
    print("\n== targets")
    print(f"async_steps=1 median step = {asy['step median s'][0] / on['step median s'][0]:.2f}x on-policy "
          f"(target <= {ASYNC_TARGET:.2f})")
    final = "final policy gold (eval)"
    print(f"async_steps=1 final policy gold (eval, 32 held-out prompts x 4 samples at T=1) {asy[final][0]:.3f} vs "
          f"on-policy {on[final][0]:.3f}: {asy[final][0] - on[final][0]:+.3f} (target within {GOLD_TOLERANCE})")
    print(f"  (training gold, last {GOLD_STEPS} steps, lags one policy version under async: "
          f"{asy[gold][0]:.3f} vs {on[gold][0]:.3f})")
    print(f"orchestration overhead, on-policy: {on['overhead'][0]:.1%} (target < {OVERHEAD_TARGET:.0%})")
    if "padding_frac" in on and "padding_frac" in budget:
        print(f"token budget: padding {budget['padding_frac'][0]:.1%} vs {on['padding_frac'][0]:.1%} on-policy, "
              f"median step {budget['step median s'][0] / on['step median s'][0]:.2f}x on-policy")
    if ratios is None:
        return
    generate_ratio, ray_ratio, hf_ratio = ratios
    print(f"our generate / raw vLLM = {generate_ratio:.2f}x (target <= {WRAPPER_TARGET})"
          + ("" if engine == "vllm" else f"  [the run's engine: {engine}]"))
    print(f"our RolloutWorker through Ray / raw vLLM, in the same minutes = {ray_ratio:.2f}x")
    print(f"our HF engine / raw HF generate = {hf_ratio:.2f}x (HFEngine.generate vs transformers generate, one process)")


def compare(args: argparse.Namespace) -> None:
    runs: dict[str, dict[str, tuple[float, str]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for number, (name, extra) in enumerate(VARIANTS, start=1):
            print(f"\n== run {number}/{len(VARIANTS)}: {name} {' '.join(extra)}", flush=True)
            run_dir = Path(tmp) / name
            cfg, records = run_default(args.steps, [*args.overrides, *extra, f"eval.every={args.steps}", *EVAL], run_dir)
            runs[name] = figures(records, args.warmup)
            final = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                     if r["step"] == args.steps and "eval/gold_mean" in r]
            runs[name]["final policy gold (eval)"] = (final[-1]["eval/gold_mean"], "{:.3f}")
            if name == "on-policy":
                base_cfg, on_policy = cfg, records
                # The raw engines get the on-policy run's model, before the other runs load the CPUs.
                model = str(Path(tmp) / name / "tiny-model" / "policy") if cfg.model.path is None else cfg.model.path
                raw = time_raw_engines(model, args.steps, args.warmup, args.overrides, Path(tmp) / "raw_engine.json")
    print_comparison(runs, args.steps, args.warmup)
    ratios = print_generate(raw, on_policy, base_cfg, args.warmup) if raw is not None else None
    print_targets(runs, ratios, base_cfg.rollout.engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="store_true", help="on-policy vs async_steps=1 vs token budget, and the raw engines")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 10; 20 with --compare)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the means (default 2; 3 with --compare)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.compare else 10)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.compare else 2)
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps {args.steps} leaves no steps to time after --warmup {args.warmup}; raise --steps")
    (compare if args.compare else breakdown)(args)


if __name__ == "__main__":
    main()
