"""Peak training memory of one policy forward+backward, with and without gradient checkpointing.

    python bench/memory.py [--layers 4] [--hidden 256] [--seq 1024] [--batch 4] [--deepspeed]

The policy is a random-init Llama big enough that activations dominate (a few layers, long
sequences, several of them), loaded and set up as the learner does it (`load_causal_lm`: dropout
off; `enable_gradient_checkpointing`; train mode), and trained on the learner's PPO loss over the
response log-probs, outside DeepSpeed. torch's profiler with ``profile_memory=True`` records every
allocation and free; the peak is the largest sum of live bytes allocated during the step
(activations, autograd buffers, gradients, logits; the weights were already there). The target:
checkpointing lowers that peak by at least 30% (exit status 1 otherwise).

``--deepspeed`` also reports, for information, the peak RSS of a one-rank DeepSpeed learner
(`rlhf_dist.learner.rank.Learner`, ZeRO-2, gloo) that runs one `train()` on the same shapes, each
setting in a fresh process. RSS counts everything the process ever held (Python, DeepSpeed,
weights, optimizer state, allocator slack), so the difference is smaller than the bench's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlhf_dist.algorithms import ppo_policy_loss  # noqa: E402
from rlhf_dist.models.loading import enable_gradient_checkpointing, load_causal_lm
from rlhf_dist.models.sequences import response_logprobs  # noqa: E402

PROMPT_TOKENS = 64
TARGET = 0.30


def write_model(out: Path, args) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
        max_position_embeddings=args.seq,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def batch(args) -> tuple[torch.Tensor, ...]:
    """(prompt_ids, prompt_mask, response_ids, response_mask, advantages): B x (64 + rest) tokens."""
    g = torch.Generator().manual_seed(0)
    response_len = args.seq - PROMPT_TOKENS
    return (
        torch.randint(0, args.vocab, (args.batch, PROMPT_TOKENS), generator=g),
        torch.ones(args.batch, PROMPT_TOKENS, dtype=torch.long),
        torch.randint(0, args.vocab, (args.batch, response_len), generator=g),
        torch.ones(args.batch, response_len),
        torch.randn(args.batch, response_len, generator=g),
    )


def train_step(model: torch.nn.Module, tensors) -> None:
    prompt_ids, prompt_mask, response_ids, response_mask, advantages = tensors
    logp, _ = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
    loss, _ = ppo_policy_loss(logp, logp.detach(), advantages, response_mask, 0.2, 0.2, "token-mean",
                              float(response_mask.sum()), float(response_mask.shape[0]))
    loss.backward()


def peak_step_bytes(model: torch.nn.Module, tensors) -> tuple[int, float]:
    """Peak live bytes allocated during one forward+backward, and its wall time (profiled)."""
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, tensors)
    seconds = time.perf_counter() - started
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()  # + on allocation, - on free
        peak = max(peak, live)
    model.zero_grad(set_to_none=True)
    return peak, seconds


def bench_policy(model_dir: Path, args) -> dict[str, float]:
    tensors = batch(args)
    warmup = tuple(t[:1, : PROMPT_TOKENS if i < 2 else 64] for i, t in enumerate(tensors))
    results = {}
    for checkpointing in (False, True):
        model = load_causal_lm(model_dir)
        if checkpointing:
            enable_gradient_checkpointing(model)
        model.train()
        train_step(model, warmup)  # first calls of each op are slow; keep them out of the timing
        model.zero_grad(set_to_none=True)
        peak, seconds = peak_step_bytes(model, tensors)
        results[checkpointing] = (peak, seconds)
        print(f"  checkpointing {'on ' if checkpointing else 'off'}: peak {peak / 2**20:8.1f} MiB allocated "
              f"during forward+backward  ({seconds:.1f} s, profiled)", flush=True)
    (off, _), (on, _) = results[False], results[True]
    reduction = 1 - on / off
    print(f"  reduction: {reduction:.1%} (target >= {TARGET:.0%})")
    return {"peak_off_bytes": off, "peak_on_bytes": on, "reduction": reduction}


def learner_child(model_dir: str, checkpointing: bool, args) -> None:
    """Run in a fresh process: one train() of a one-rank DeepSpeed learner; print its peak RSS."""
    from rlhf_dist.config import load_config
    from rlhf_dist.experience import Experience
    from rlhf_dist.learner.rank import Learner
    from rlhf_dist.weight_sync.group import free_port

    cfg = load_config(None, [
        "learner.num_workers=1", f"learner.micro_batch_size={args.batch}", f"learner.mini_batch_size={args.batch}",
        f"rollout.prompts_per_step={args.batch // 2}", "rollout.samples_per_prompt=2",
        f"learner.gradient_checkpointing={str(checkpointing).lower()}",
    ])
    learner = Learner(cfg, model_dir, rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port())
    prompt_ids, prompt_mask, response_ids, response_mask, advantages = batch(args)
    exp = Experience(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                     response_mask=response_mask, rollout_logprobs=torch.zeros_like(advantages), advantages=advantages)
    before = _rss_kib("VmRSS")
    _reset_peak_rss()  # so that the peak is the step's, not that of loading libraries and weights
    learner.train(exp, kl_coef=0.0)
    print(json.dumps({"rss_before_kib": before, "rss_peak_kib": _rss_kib("VmHWM")}))


def _rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since start or the last reset) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def bench_learner(model_dir: Path, args) -> None:
    print("DeepSpeed learner (one rank, ZeRO-2), one train() on the same batch, for information:")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for checkpointing in (False, True):
        cmd = [sys.executable, __file__, "--learner-child", str(model_dir), "--checkpointing", str(int(checkpointing)),
               "--seq", str(args.seq), "--batch", str(args.batch), "--vocab", str(args.vocab)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(f"the learner child failed (exit {out.returncode})")
        rss = json.loads(out.stdout.strip().splitlines()[-1])
        peak, before = rss["rss_peak_kib"] / 1024, rss["rss_before_kib"] / 1024
        print(f"  checkpointing {'on ' if checkpointing else 'off'}: peak RSS {peak:8.1f} MiB during train(), "
              f"{peak - before:+.1f} MiB over the {before:.1f} MiB held after setup")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256, help="a multiple of 64 (head_dim 64)")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence (64 prompt + the rest response)")
    parser.add_argument("--batch", type=int, default=4, help="sequences (even)")
    parser.add_argument("--deepspeed", action="store_true", help="also report a DeepSpeed learner's peak RSS")
    parser.add_argument("--learner-child", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.learner_child:
        learner_child(args.learner_child, bool(args.checkpointing), args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(Path(tmp) / "policy", args)
        params = sum(p.numel() for p in load_causal_lm(model_dir).parameters())
        print(f"memory bench: Llama {args.layers} layers, hidden {args.hidden}, ffn {4 * args.hidden}, vocab {args.vocab} "
              f"({params / 1e6:.1f}M params, {params * 4 / 2**20:.0f} MiB fp32); batch {args.batch} x {args.seq} tokens; "
              f"1 thread")
        result = bench_policy(model_dir, args)
        if args.deepspeed:
            bench_learner(model_dir, args)
    return 0 if result["reduction"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
