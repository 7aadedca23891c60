"""The GPU smoke run: one GPU, colocated, CUDA IPC sync, on a Qwen2-0.5B-shaped model in bf16.

Run by bench/gpu_smoke.sh on the lent single-H100 machine (torch, no vLLM: the hf engine). Builds the
model locally (random init, no download; the tiny tokenizer, whose 512 ids are a subset of the
model's 151,936), plans its memory, trains a few GRPO steps with every role on the one GPU
(learner 0.4 + hf engine 0.4 + reference 0.2 of it, the letters rule as reward), and prints:

- the weight sync: transport, bytes, seconds, GB/s, and that every sync was verified;
- tokens/s of each phase (generated tokens over the phase's seconds; train: trained positions);
- learner MFU: 6 x trainable params x trained positions (+ 2 x params x positions for the old
  log-prob pass) over the train phase's seconds, against the H100's 989 TFLOP/s dense bf16;
- the memory plan of the learner against its measured peak (`memory/learner_peak_gib`,
  torch.cuda.max_memory_allocated in the learner's process).

    python bench/gpu_smoke.py [--steps 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN2_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-6,
)
H100_BF16_DENSE_FLOPS = 989e12
PROMPTS, SAMPLES, NEW_TOKENS = 32, 8, 128


def build_model(out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf_dist.models.tiny import CHAT_TEMPLATE, train_tokenizer

    path = out / "qwen2-0.5b-shape"
    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    tokenizer = train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(**QWEN2_05B, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def overrides(model: Path, steps: int) -> list[str]:
    return [
        "name=gpu-smoke", f"steps={steps}", f"model.path={model}", "model.dtype=bfloat16",
        "rollout.engine=hf", "rollout.num_workers=1", "learner.num_workers=1", "reference.num_workers=1",
        "placement.colocate=true", "placement.learner.num_gpus=0.4", "placement.rollout.num_gpus=0.4",
        "placement.reference.num_gpus=0.2", "placement.reference.colocate_with=learner",
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.samples_per_prompt={SAMPLES}",
        f"rollout.sampling.max_new_tokens={NEW_TOKENS}", "rollout.max_model_len=256", "data.max_prompt_tokens=64",
        f"learner.mini_batch_size={PROMPTS * SAMPLES}", "learner.micro_batch_size=32", "learner.zero_stage=2",
        "learner.optimizer.lr=1e-6", "checkpoint.every=0", "checkpoint.save_final=false", "logging.tensorboard=false",
        "logging.samples_every=0",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", default="/tmp/gpu-smoke")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible; this benchmark needs one", file=sys.stderr)
        return 2
    from launch.cluster import local_nodes
    from launch.run import train
    from rlhf_dist.config import load_config
    from rlhf_dist.planning.memory_formulas import GIB, learner_estimate, model_shape
    from rlhf_dist.planning.memory_plan import memory_table, plan_memory
    from rlhf_dist.planning.placement import plan_placement

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out)
    cfg = load_config(None, overrides(model, args.steps))
    shape = model_shape(cfg.model)
    plan = plan_placement(cfg, local_nodes(cfg))
    print(f"device: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / GIB:.1f} GiB")
    print(plan.table())
    print(memory_table(cfg, plan, plan_memory(cfg, plan, shape)))

    run_dir = out / f"run-{len(list(out.glob('run-*')))}"
    result = train(cfg, run_dir, progress=False)
    rows = [r for r in result.records if "timing/train" in r]
    timed = rows[1:] or rows  # the first step includes warm-up (CUDA kernels, allocator)

    def mean(key: str) -> float:
        values = [r[key] for r in timed if key in r]
        return statistics.fmean(values) if values else float("nan")

    figures: dict[str, float | str] = {}
    synced = [r for r in result.records if "sync/bytes" in r]
    figures["sync/verified_all"] = float(all(r["sync/verified"] == 1.0 for r in synced))
    figures["sync/bytes"] = mean("sync/bytes")
    figures["sync/seconds"] = mean("sync/seconds")
    figures["sync/GB_per_s"] = figures["sync/bytes"] / 1e9 / figures["sync/seconds"]
    sequences = PROMPTS * SAMPLES
    positions = sequences * (mean("rollout/prompt_len_mean") + mean("rollout/response_len_mean"))
    generated = sequences * mean("rollout/response_len_mean")
    for phase in sorted(k[len("timing/"):] for k in timed[0] if k.startswith("timing/")):
        seconds = mean(f"timing/{phase}")
        figures[f"timing/{phase}"] = seconds
        tokens = generated if phase == "generate" else positions
        figures[f"tokens_per_s/{phase}"] = tokens / seconds if seconds > 0 else float("nan")
    figures["throughput/tokens_per_s"] = mean("throughput/tokens_per_s")
    params = shape.params
    figures["model/params"] = float(params)
    flops = (6 + 2) * params * positions  # train step (fwd + bwd) + the old log-prob pass (fwd), same phase
    figures["learner/mfu"] = flops / mean("timing/train") / H100_BF16_DENSE_FLOPS
    planned = learner_estimate(cfg, shape).peak / GIB
    measured = max(r.get("memory/learner_peak_gib", float("nan")) for r in result.records)
    figures["memory/learner_planned_gib"] = planned
    figures["memory/learner_peak_gib"] = measured
    figures["memory/plan_error"] = (planned - measured) / measured
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print("\nfigures (steps 2.., means):")
    for key, value in figures.items():
        print(f"  {key:<32} {value:.4g}" if isinstance(value, float) else f"  {key:<32} {value}")
    print("  (MFU counts 8 x params x positions per step over timing/train against 989 TFLOP/s; plain DeepSpeed "
          "ZeRO-2 on this shape and GPU measured 19.6%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
