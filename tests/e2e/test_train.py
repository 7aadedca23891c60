"""Whole training runs, as a user starts them: real Ray, vLLM, DeepSpeed, reward and reference actors.

Each run starts from a random-init tiny model whose gold reward (the share of "a" characters in
its responses) is ~0.08; a working loop more than doubles it within a dozen steps, a broken one
(no gradient, wrong sign, stale weights in the generators) leaves it flat.
"""

import json
import math
import os
import subprocess
import sys
import time
from statistics import mean

import pytest

from launch.run import train
from rlhf_dist.checkpoints.run_lock import holder_of
from rlhf_dist.config import load_config
from tests.e2e.test_console import classify

CLI_STEPS = 12
REQUIRED_KEYS = {
    "step", "policy_version", "reward/mean", "reward/gold_mean", "kl/mean", "rollout/logprob_abs_diff",
    "sync/verified", "throughput/tokens_per_s", "policy/entropy", "policy/clip_frac",
    *(f"timing/{p}" for p in ("generate", "score", "reference", "values", "advantages", "train", "sync")),
}


def _check_learned(records, steps):
    assert [r["step"] for r in records] == list(range(steps))
    assert [r["policy_version"] for r in records] == list(range(steps)), "each step must sample from the last sync"
    gold = [r["reward/gold_mean"] for r in records]
    first, last = mean(gold[:3]), mean(gold[-3:])
    assert last > 2 * first, f"gold reward did not double: first 3 steps {first:.3f}, last 3 {last:.3f}"
    assert all(math.isfinite(r["kl/mean"]) for r in records)
    assert all(r["sync/verified"] == 1.0 for r in records)
    # The proxy is the gold rule here: the reward-hacking alarm must stay quiet.
    assert all(r["monitor/hacking_alarm"] == 0.0 for r in records)
    # fp32 on both sides: the rollout engine and the learner compute the same distribution.
    assert max(r["rollout/logprob_abs_diff"] for r in records) < 1e-4


@pytest.mark.parametrize(
    "algorithm, overrides",
    [
        # PPO with a reference actor of its own (the default keeps the reference in the learner ranks).
        ("ppo", ["algorithm.kl.mode=reward", "algorithm.kl.kind=k1", "placement.reference.colocate_with=null"]),
        ("rloo", []),
        ("reinforce_pp", ["algorithm.kl.mode=reward", "algorithm.kl.kind=k1"]),
    ],
)
def test_algorithm_raises_gold_reward(algorithm, overrides, tmp_path, local_ray):
    steps = 12
    cfg = load_config(
        None,
        [f"algorithm.name={algorithm}", f"steps={steps}", "logging.tensorboard=false", "checkpoint.save_final=false",
         *overrides],
    )
    result = train(cfg, tmp_path / "run", progress=False)
    _check_learned(result.records, steps)
    if algorithm == "ppo":
        assert all(math.isfinite(r["critic/value_loss"]) for r in result.records)


@pytest.fixture(scope="module")
def default_cli_run(tmp_path_factory):
    """`rlhf-dist train` on the embedded default (GRPO), shortened, as a user starts it from a shell
    whose output is not a terminal (one line per step); shared by the tests of its outputs and of its
    console (tests/e2e/test_console.py's rules). Once it holds its run dir, a second `train` and a
    `train --resume` into the same dir are started beside it: both must be refused, and the first
    run must end whole (its own tests)."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "launch", "train", f"steps={CLI_STEPS}", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while (holder_of(run_dir) or {}).get("pid") != first.pid and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    second = [
        subprocess.Popen([sys.executable, "-m", "launch", "train", *args, "--run-dir", str(run_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args in ([f"steps={CLI_STEPS}"], ["--resume"])
    ]
    answers = [p.communicate(timeout=300) for p in second]
    refused = [subprocess.CompletedProcess(p.args, p.returncode, *a) for p, a in zip(second, answers)]
    stdout, stderr = first.communicate(timeout=900)
    return run_dir, subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr), (first.pid, refused)


def test_a_second_run_into_a_run_dir_in_use_is_refused_naming_its_holder(default_cli_run):
    run_dir, _, (pid, refused) = default_cli_run
    for out in refused:
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        assert f"{str(run_dir)!r} is in use by another rlhf-dist run (PID {pid} on host {os.uname().nodename}" in out.stderr
    assert "--resume" in refused[1].stderr.split("is in use")[0]


def test_default_run_from_the_command_line(default_cli_run):
    """The run learns, and its outputs are what a user reads."""
    run_dir, out, _ = default_cli_run
    steps = CLI_STEPS
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gold reward" in out.stdout and str(run_dir) in out.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    missing = REQUIRED_KEYS - set(records[0])
    assert not missing, f"metrics.jsonl lacks {sorted(missing)}"
    _check_learned(records, steps)
    assert load_config(run_dir / "config.yaml").steps == steps
    assert any((run_dir / "tensorboard").iterdir())

    # The final policy loads in transformers and in vLLM, and both agree on it.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run_dir / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("write letters: cat").input_ids
    code = (
        "import json, sys; from vllm import LLM, SamplingParams;"
        f"llm = LLM(model={str(final)!r}, dtype='float32', enforce_eager=True, max_model_len=64);"
        f"out = llm.generate([{{'prompt_token_ids': {ids}}}], SamplingParams(max_tokens=6, temperature=0));"
        "print(json.dumps(list(out[0].outputs[0].token_ids)))"
    )
    vllm_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert vllm_out.returncode == 0, vllm_out.stderr[-3000:]
    vllm_ids = json.loads(vllm_out.stdout.strip().splitlines()[-1])
    hf_ids = model.generate(
        __import__("torch").tensor([ids]), max_new_tokens=len(vllm_ids), do_sample=False
    )[0, len(ids):].tolist()
    assert hf_ids == vllm_ids


def test_async_rollouts_learn_with_staleness_at_most_one(tmp_path, local_ray):
    """rollout.async_steps=1: step t trains on a batch sampled by policy version t-1 while the
    generators sample step t+1's; truncated importance weights correct for the one-version gap."""
    steps = 12
    cfg = load_config(None, [f"steps={steps}", "rollout.async_steps=1", "logging.tensorboard=false",
                             "checkpoint.save_final=false"])
    records = train(cfg, tmp_path / "run", progress=False).records
    assert [r["step"] for r in records] == list(range(steps))
    # Batch t+1 is sampled by version t (the weights synced after step t-1's update), trained at t+1.
    assert [r["policy_version"] for r in records] == [0] + list(range(steps - 1))
    assert [r["rollout/staleness_max"] for r in records] == [0.0] + [1.0] * (steps - 1)
    assert all(r["rollout/staleness_mean"] <= r["rollout/staleness_max"] for r in records)
    gold = [r["reward/gold_mean"] for r in records]
    assert mean(gold[-3:]) > 2 * mean(gold[:3]), f"gold did not double: {gold}"
    # tis by default under async: weights are logged; one version apart they stay near 1.
    assert all(0.0 < r["is/weight_mean"] <= 2.0 and r["is/weight_max"] <= 2.0 for r in records)
    assert all(0.0 <= r["is/clipped_frac"] <= 1.0 for r in records)
    # Step 0 is on-policy (nothing was produced ahead of it): behaviour = proximal, weights = 1.
    assert records[0]["is/clipped_frac"] == 0.0 and abs(records[0]["is/weight_mean"] - 1.0) < 1e-3
    assert all(r["sync/verified"] == 1.0 for r in records)
    assert "timing/rollout_wait" in records[1] and "timing/logprobs" in records[1]


def test_a_default_run_speaks_in_our_voice_and_logs_the_libraries_to_the_run_dir(default_cli_run):
    """The console of that run, as a user sees it: only the tool's own lines on the terminal, the
    libraries' output in RUN_DIR/logs/ (what counts as ours: tests/e2e/test_console.py)."""
    run_dir, out, _ = default_cli_run
    transcript = out.stdout + out.stderr
    assert out.returncode == 0, transcript[-4000:]
    ours, theirs = classify(transcript)
    share = len(theirs) / (len(ours) + len(theirs))
    assert share <= 0.10, f"{len(theirs)} of {len(ours) + len(theirs)} lines are not ours:\n" + "\n".join(theirs)
    assert not theirs, "library lines on the terminal:\n" + "\n".join(theirs)

    # One line per startup phase, with its time, in our words.
    for phase in ("starting Ray (", "vLLM engine 1/1 ready (", "reward ready: 1 scorer (",
                  "learners ready: ZeRO-2, 2 ranks, each with the reference model ("):
        assert any(line.startswith(phase) or phase in line for line in ours), f"no phase line {phase!r}"
    assert sum(line.startswith("step ") for line in ours) == CLI_STEPS  # not a terminal: a line per step
    assert f"{CLI_STEPS} steps logged (0-{CLI_STEPS - 1}); windows of 5 steps" in out.stdout
    outputs = next(line for line in ours if line.startswith("outputs: "))
    for entry in ("config.yaml", "metrics.jsonl", "checkpoints/", "logs/", "tiny-model/", "final/"):
        assert entry in outputs

    # The libraries' output is in RUN_DIR/logs/, one file per actor, and known noise stays there.
    logs = run_dir / "logs"
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    rollout = (logs / "rollout-0.log").read_text()
    assert "Initializing a V1 LLM engine" in rollout
    assert "RotaryEmbedding: Failed to load weights" in rollout and "RotaryEmbedding" not in transcript
    assert {"learner-0.log", "learner-1.log", "reward-0.log"} <= {p.name for p in logs.iterdir()}
    assert "reference model ready" not in transcript  # no reference actor: the learner ranks hold it
    assert "untested optimizer" in (logs / "learner-0.log").read_text()
