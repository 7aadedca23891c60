"""Our GRPO beside TRL's `GRPOTrainer`, on the same workload, in one run.

    python bench/vs_trl.py [--steps 30] [--warmup 3] [--sizes tiny,20m] [--out results.json] [--set KEY=VALUE ...]

For each model size it builds one random-init Llama and tokenizer (rlhf_dist/models/tiny.py) and one
prompt file (the built-in letters task), then trains both on them: ours through `launch.run.train`
(Ray, vLLM on CPU, a DeepSpeed learner, one learner rank with ZeRO-0, threads as the placement plans them), TRL
in a process of its own, in its own venv (``bench/.trl-venv``, built here on first use with
``torch==2.13.0 trl==1.16.0``; not a dependency of ours). The same for both:

- prompts, 8 per step x 8 samples, at most 24 new tokens, temperature 1, no top-k/top-p;
- the reward: our ``letters`` rule, its source handed to TRL verbatim;
- one optimizer step per batch of 64 sequences, in micro-batches of 8; lr (3e-3 tiny, 1e-5 20M), KL coefficient (beta, k3
  in the loss), clip 0.2, token-mean loss (TRL's ``dapo``), constant lr, grad-norm clip 1.0.

It prints, per size and side: the median step time (steps after --warmup), the median of each phase
(generate, score, reference, train = the rest of the step; ours also sync), generated tokens/s, the
reward curve in 5-step means and the last-5 mean; then our step over TRL's, per phase too. Timings
mean something only on a quiet machine (STACK-NOTES: TRL's OpenMP collapses beside other work).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / "bench" / ".trl-venv"
TRL_PINS = ("torch==2.13.0", "trl==1.16.0")  # torch: the CPU wheel on disk here (an unpinned one is CUDA)
SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, vocab_size=512),
    "20m": dict(hidden_size=512, num_layers=6, num_heads=8, intermediate_size=1408, vocab_size=512),
}
# The tiny model's rate is the default run's; at 3e-3, 3e-4 or 5e-5 the 20M model collapses within
# 30 steps on both sides, onto plateaus of its own.
LR = {"tiny": 3e-3, "20m": 1e-5}
WORKLOAD = dict(prompts_per_step=8, samples_per_prompt=8, max_new_tokens=24, micro_batch=8, beta=0.01,
                clip=0.2, max_grad_norm=1.0, seed=0)
PHASES = ("generate", "score", "reference", "train")


def trl_python() -> Path:
    """TRL's venv, built on first use."""
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        print(f"building TRL's venv in {TRL_VENV} ({', '.join(TRL_PINS)}; a few minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRL_PINS], check=True)
    return python


def build(size: str, root: Path) -> tuple[Path, Path]:
    """The model of ``size`` and the prompt file, both sides' inputs."""
    from rlhf_dist.config.schema import TinyModelConfig
    from rlhf_dist.data.prompts import builtin_prompts
    from rlhf_dist.models.tiny import make_tiny

    model = make_tiny(root / f"model-{size}", TinyModelConfig(**SIZES[size]), seed=WORKLOAD["seed"]).policy
    prompts = root / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in builtin_prompts("letters", 1024, 0)))
    return model, prompts


def ours(model: Path, prompts: Path, steps: int, lr: float, run_dir: Path, extra: list[str]) -> list[dict]:
    """Per step: its seconds, each phase's, generated tokens and mean reward."""
    from launch.run import train
    from rlhf_dist.config import load_config

    w = WORKLOAD
    batch = w["prompts_per_step"] * w["samples_per_prompt"]
    cfg = load_config(None, [
        f"steps={steps}", f"model.path={model}", f"data.prompts={prompts}", "data.max_prompt_tokens=32",
        f"rollout.prompts_per_step={w['prompts_per_step']}", f"rollout.samples_per_prompt={w['samples_per_prompt']}",
        f"rollout.sampling.max_new_tokens={w['max_new_tokens']}", "learner.num_workers=1",
        f"learner.mini_batch_size={batch}", f"learner.micro_batch_size={w['micro_batch']}",
        f"learner.optimizer.lr={lr}", f"algorithm.kl.coef={w['beta']}", f"algorithm.clip_low={w['clip']}",
        f"algorithm.clip_high={w['clip']}", f"learner.grad_clip={w['max_grad_norm']}", f"seed={w['seed']}",
        "checkpoint.every=0", "checkpoint.save_final=false", "logging.samples_every=0", "logging.tensorboard=false",
        # One rank has nothing to partition: ZeRO-2's bookkeeping (each micro-batch's gradients copied
        # into its flat buffers) cost 1.1 s of a 20M step here; --set learner.zero_stage=2 shows it.
        "learner.zero_stage=0",
        *extra,
    ])
    records = [r for r in train(cfg, run_dir, progress=False).records if "timing/step" in r]
    return [{
        "step": r["timing/step"], **{p: r.get(f"timing/{p}", 0.0) for p in (*PHASES, "sync")},
        "tokens": r["rollout/response_len_mean"] * batch, "reward": r["reward/mean"],
    } for r in records]


def trl(model: Path, prompts: Path, steps: int, lr: float, out_dir: Path) -> dict:
    from rlhf_dist.rewards.rules import letters_reward

    w = WORKLOAD
    spec = {
        **w, "lr": lr, "model": str(model), "prompts": str(prompts), "steps": steps, "out_dir": str(out_dir / "trl"),
        "batch": w["prompts_per_step"] * w["samples_per_prompt"],
        "reward_source": inspect.getsource(letters_reward).split("\n", 1)[1],  # without the registry decorator
        "reward_name": letters_reward.__name__,
    }
    (out_dir / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH", "VIRTUAL_ENV")}
    with open(out_dir / "trl.log", "w") as log:  # TRL prints every step's log dict
        done = subprocess.run([str(trl_python()), str(ROOT / "bench" / "trl_grpo.py"), str(out_dir / "spec.json"),
                               str(out_dir / "trl.json")], env=env | {"TOKENIZERS_PARALLELISM": "false"},
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"TRL's run failed (exit {done.returncode}); its output:\n{(out_dir / 'trl.log').read_text()[-4000:]}")
    return json.loads((out_dir / "trl.json").read_text())


def summary(rows: list[dict], warmup: int) -> dict:
    timed = rows[warmup:] or rows
    step = median(r["step"] for r in timed)
    phases = {p: median(r.get(p, 0.0) for r in timed) for p in (*PHASES, "sync") if any(p in r for r in timed)}
    rewards = [r["reward"] for r in rows]
    return {
        "step": step, "phases": phases, "tokens_per_s": median(r["tokens"] / r["step"] for r in timed),
        "curve": [sum(rewards[i:i + 5]) / len(rewards[i:i + 5]) for i in range(0, len(rewards), 5)],
        "last5": sum(rewards[-5:]) / len(rewards[-5:]),
    }


def report(size: str, us: dict, them: dict) -> str:
    lines = [f"\n== {size}: median step {us['step']:.3f} s (ours) vs {them['step']:.3f} s (TRL) = "
             f"{us['step'] / them['step']:.2f}x"]
    lines.append(f"  {'':<16}{'ours':>9}{'TRL':>9}{'ratio':>8}")
    for p in (*PHASES, "sync"):
        a, b = us["phases"].get(p), them["phases"].get(p)
        if a is None and b is None:
            continue
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"  {p + ' s':<16}{a if a is not None else 0:>9.3f}{b if b is not None else 0:>9.3f}{ratio:>8}")
    lines.append(f"  {'tokens/s':<16}{us['tokens_per_s']:>9.0f}{them['tokens_per_s']:>9.0f}"
                 f"{us['tokens_per_s'] / them['tokens_per_s']:>7.2f}x")
    lines.append(f"  reward, 5-step means  ours {' '.join(f'{x:.2f}' for x in us['curve'])}")
    lines.append(f"                        TRL  {' '.join(f'{x:.2f}' for x in them['curve'])}")
    lines.append(f"  last-5 reward  ours {us['last5']:.3f}  TRL {them['last5']:.3f}  "
                 f"difference {us['last5'] - them['last5']:+.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the medians")
    parser.add_argument("--sizes", default="tiny,20m", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--out", type=Path, help="write every step's figures here as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for our side only (repeatable), e.g. learner.zero_stage=0")
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    trl_python()
    results, text = {}, []
    with tempfile.TemporaryDirectory(prefix="vs-trl-") as tmp:
        root = Path(tmp)
        for size in sizes:
            model, prompts = build(size, root)
            print(f"[{size}] ours: {args.steps} steps", flush=True)
            ours_rows = ours(model, prompts, args.steps, LR[size], root / f"ours-{size}", args.set)
            print(f"[{size}] TRL: {args.steps} steps", flush=True)
            (root / f"trl-{size}").mkdir()
            trl_out = trl(model, prompts, args.steps, LR[size], root / f"trl-{size}")
            us, them = summary(ours_rows, args.warmup), summary(trl_out["rows"], args.warmup)
            results[size] = {"ours": {"rows": ours_rows, **us}, "trl": {**trl_out, **them}}
            text.append(report(size, us, them))
            print(text[-1], flush=True)
    print("\n".join(["", "summary", *text]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
