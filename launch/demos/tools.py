"""`rlhf-dist demo tools`: tool use learned with RL on the tiny model (TRL's tool-GRPO showcase, shrunk).

Questions "what is A times B?" with two-digit A and B, and a `multiply(a, b)` tool. The tiny model
cannot multiply; it can learn to call the tool with the question's numbers and to copy its answer.
SFT on tool-call demonstrations (hermes calls, rendered by the tiny model's chat template with the
tool's schema) teaches the format; GRPO with the `math` rule on the final answer then runs on the
train split, evaluated on a held-out split of problems at step 0 (the SFT model), during training
and at the end. ``no_tool_accuracy`` is the final policy answering the test questions directly,
without a tool result: what the tool is worth. Everything goes to ``DIR/summary.json``.
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
from rlhf_dist.envs import Tool
from rlhf_dist.models.tiny import make_tiny

TOOL = "launch.demos.tools:multiply"


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


@dataclass(frozen=True)
class Size:
    test_size: int  # held-out problems
    demos: int  # SFT demonstrations (two chat rows each: the call, then the answer)
    sft_epochs: int
    rl_steps: int
    eval_every: int


FULL = Size(test_size=200, demos=1500, sft_epochs=2, rl_steps=40, eval_every=10)
SMALL = Size(test_size=128, demos=1500, sft_epochs=2, rl_steps=16, eval_every=8)
EVAL_SAMPLES = 2
TEMPERATURE = 1.0


def call_text(a: int, b: int) -> str:
    """The hermes call of the tool, as json.dumps writes it: ``"a": 25`` holds the number as the
    question does (" 25", one token), so the model copies tokens rather than re-spelling them."""
    return "<tool_call>" + json.dumps({"name": "multiply", "arguments": {"a": a, "b": b}}) + "</tool_call>"


def question(a: int, b: int) -> list[dict]:
    return [{"role": "user", "content": f"what is {a} times {b}?"}]


def problem_split(test_size: int, seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Every (a, b) with two-digit a and b, split at random into disjoint train and test problems."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    return pairs[test_size:], pairs[:test_size]


def demonstration_rows(pairs: list[tuple[int, int]], schema: dict) -> list[dict]:
    """Two SFT rows per problem, with the tool's schema: the question answered by the call, then the
    whole exchange answered by the product."""
    rows = []
    for a, b in pairs:
        call = {"role": "assistant", "content": call_text(a, b)}
        rows.append({"messages": [*question(a, b), call], "tools": [schema]})
        rows.append({"messages": [*question(a, b), call, {"role": "tool", "content": str(a * b)},
                                  {"role": "assistant", "content": str(a * b)}], "tools": [schema]})
    return rows


def _write_parquet(path: Path, pairs: list[tuple[int, int]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"messages": question(a, b), "answer": str(a * b)} for a, b in pairs]), path)


@releases_run_dirs
def run_tools_demo(run_dir: Path, seed: int = 0, small: bool = False) -> dict:
    run_dir = prepare_run_dir(run_dir)
    size = SMALL if small else FULL
    started = time.perf_counter()
    train_pairs, test_pairs = problem_split(size.test_size, seed)
    data = run_dir / "data"
    data.mkdir(exist_ok=True)
    _write_parquet(data / "train.parquet", train_pairs)
    _write_parquet(data / "test.parquet", test_pairs)
    print(f"== demo tools: A times B with two-digit A, B and a multiply tool; {len(train_pairs)} train / "
          f"{len(test_pairs)} test problems; SFT on {size.demos} tool-call demonstrations, GRPO {size.rl_steps} steps")

    # The tokenizer also learns from the task's own lines (questions, calls, answers), so a call is a
    # few dozen tokens rather than one per character, as a real model's tokenizer has tokens for them.
    corpus = [line for a, b in random.Random(seed + 1).sample(train_pairs, 1000)
              for line in (question(a, b)[0]["content"], call_text(a, b), str(a * b))]
    base = make_tiny(run_dir / "tiny-model", seed=seed, extra_corpus=corpus).policy
    schema = Tool.from_function(multiply, TOOL).schema
    demos = demonstration_rows(random.Random(seed).sample(train_pairs, size.demos), schema)
    sft_cfg = StageConfig(
        name="sft", seed=seed, epochs=size.sft_epochs, model={"path": str(base)},
        data={"max_length": 160, "eval_fraction": 0.02},
        learner={"mini_batch_size": 32, "micro_batch_size": 16, "optimizer": {"lr": 1e-3}},
        logging={"tensorboard": False},
    )
    sft = run_stage("sft", sft_cfg, run_dir / "sft", rows=demos)

    grpo_cfg = load_config(None, [
        "name=tools", f"seed={seed}", f"steps={size.rl_steps}", "algorithm.name=grpo", "rollout.engine=hf",
        f"model.path={sft.model_dir}", f"data.prompts={data / 'train.parquet'}", "data.max_prompt_tokens=96",
        "reward.components=[{type: rule, name: math}]", "reward.gold=null",
        f"rollout.multi_turn.tools=[{TOOL}]", "rollout.multi_turn.max_turns=2", "rollout.multi_turn.max_total_tokens=224",
        "rollout.max_model_len=256",
        "rollout.prompts_per_step=16", "rollout.samples_per_prompt=8",
        f"rollout.sampling.temperature={TEMPERATURE}", "rollout.sampling.max_new_tokens=64",
        "learner.mini_batch_size=64", "learner.micro_batch_size=16", "learner.optimizer.lr=1e-4",
        "algorithm.kl.coef=0.001", "algorithm.kl.kind=k3", "algorithm.kl.mode=loss",
        f"eval.every={size.eval_every}", f"eval.prompts={data / 'test.parquet'}",
        f"eval.max_prompts={size.test_size}", f"eval.samples_per_prompt={EVAL_SAMPLES}",
        f"eval.temperature={TEMPERATURE}", "checkpoint.every=0", "logging.samples_every=0",
        "logging.tensorboard=false",
    ])
    rl = train(grpo_cfg, run_dir / "grpo", progress=False)
    curve = [(r["step"], r["eval/pass@1"]) for r in rl.records if "eval/pass@1" in r]
    evals = [json.loads(line) for line in (run_dir / "grpo" / "eval.jsonl").read_text().splitlines()]
    last = [e for e in evals if e["step"] == curve[-1][0]]
    n = len(last)
    sft_acc, rl_acc = curve[0][1], curve[-1][1]
    no_tool = no_tool_accuracy(rl.final_dir or Path(sft.model_dir), test_pairs, seed)
    rate = sum(any(m["role"] == "tool" for m in e.get("transcript", [])) for e in last) / max(1, n)
    summary = {
        "sft_accuracy": sft_acc, "rl_accuracy": rl_acc, "gain": rl_acc - sft_acc,
        "no_tool_accuracy": no_tool, "tool_call_rate": rate,
        "sft_accuracy_stderr": _stderr(sft_acc, n), "rl_accuracy_stderr": _stderr(rl_acc, n),
        "no_tool_accuracy_stderr": _stderr(no_tool, len(test_pairs)), "tool_call_rate_stderr": _stderr(rate, n),
        "gain_stderr": math.sqrt(_stderr(sft_acc, n) ** 2 + _stderr(rl_acc, n) ** 2),
        "eval_samples": n, "temperature": TEMPERATURE,
        "curve": [{"step": s, "accuracy": a} for s, a in curve], "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_text(summary, run_dir))
    return summary


def _stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(1, n))


def no_tool_accuracy(policy: Path, pairs: list[tuple[int, int]], seed: int) -> float:
    """The policy answering each question directly (no tools offered, no tool result), one sample at
    the training temperature: the share whose reply holds the product, as the `math` rule grades it."""
    import torch

    from rlhf_dist.models.loading import load_causal_lm, load_tokenizer
    from rlhf_dist.rewards.rules import bind_rule

    math_rule = bind_rule("math", {})
    tok, model = load_tokenizer(str(policy), False), load_causal_lm(str(policy), "float32", False).eval()
    tok.padding_side = "left"  # one batch: every prompt ends where generation starts
    texts = [tok.apply_chat_template(question(a, b), add_generation_prompt=True, tokenize=False) for a, b in pairs]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=TEMPERATURE, max_new_tokens=16,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    replies = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    right = sum(math_rule("", reply, {"answer": str(a * b)}) > 0 for reply, (a, b) in zip(replies, pairs))
    return right / len(pairs)


def summary_text(s: dict, run_dir: Path) -> str:
    curve = "  ".join(f"{p['step']}:{p['accuracy']:.3f}" for p in s["curve"])
    return "\n".join([
        "",
        "== demo tools summary",
        f"test accuracy after SFT    {s['sft_accuracy']:.3f}  ({s['eval_samples']} samples at T={s['temperature']:g})",
        f"test accuracy after GRPO   {s['rl_accuracy']:.3f}  ({s['gain']:+.3f}, standard error {s['gain_stderr']:.3f})",
        f"without the tool's answer  {s['no_tool_accuracy']:.3f}",
        f"tool call rate             {s['tool_call_rate']:.3f}",
        f"accuracy by step           {curve}",
        f"time                       {s['seconds']:.0f} s",
        outputs_line(run_dir, {"grpo/": "the GRPO run, with eval.jsonl"}),
    ])
