"""A user's real job, through the CLI: chat prompts in a Parquet file rendered with the chat
template, a Python reward that reads a label column, held-out eval, an LR warmup.

One run serves every test of the module. The reward is the row's own ``secret`` label, so it is
right only if the labels reached the reward function; eval.jsonl lets the test check that sample by
sample, because each prompt's text names its row. A second reward in TRL's style
(``completions, secret, **kwargs``, weight 0) records what it is given, to check that names bind to
the right values.
"""

import json
import os
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_dist.metrics.logger import read_metrics

STEPS, EVAL_EVERY, HOLDOUT, LR, WARMUP = 4, 2, 8, 1e-3, 4
REWARD_MODULE = '''
def secret_label(prompts, responses, secret):
    """The row's label, whatever was sampled: right only if the `secret` column arrived."""
    assert len(secret) == len(prompts) == len(responses)
    return [float(s) for s in secret]


def trl_style(completions, secret, **kwargs):
    """TRL's form: the responses as `completions`, a column by name, the rest in **kwargs."""
    import json, os
    record = {"completions": completions, "secret": secret, "prompts": kwargs["prompts"],
              "ids": kwargs["completion_ids"], "step": kwargs["trainer_state"].global_step}
    with open(os.environ["TRL_STYLE_LOG"], "a") as f:
        f.write(json.dumps(record) + "\\n")
    return [0.0] * len(completions)
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-job")
    rng = random.Random(0)
    words = "cat red banana apple moon tree".split()
    rows = [{"messages": [{"role": "user", "content": f"write letters: {rng.choice(words)} row{i}"}],
             "secret": round(rng.random(), 4), "row_id": i} for i in range(72)]
    pq.write_table(pa.Table.from_pylist(rows), root / "prompts.parquet")
    (root / "label_reward.py").write_text(REWARD_MODULE)
    run_dir = root / "run"
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TRL_STYLE_LOG": str(root / "trl_style.jsonl")}
    cmd = [
        sys.executable, "-m", "launch", "train", f"steps={STEPS}", f"data.prompts={root / 'prompts.parquet'}",
        "reward.components=[{type: python, path: 'label_reward:secret_label', name: secret},"
        " {type: python, path: 'label_reward:trl_style', name: trl}]", "reward.gold=null",
        "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "learner.mini_batch_size=32",
        "learner.micro_batch_size=8", f"learner.optimizer.lr={LR}", "learner.optimizer.scheduler=linear",
        f"learner.optimizer.warmup_steps={WARMUP}", f"eval.every={EVAL_EVERY}", f"eval.holdout={HOLDOUT}",
        "eval.samples_per_prompt=2", "checkpoint.every=0", "logging.samples_every=1", "--run-dir", str(run_dir), "--no-progress",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    secrets = {f"row{r['row_id']}": r["secret"] for r in rows}
    return run_dir, secrets, out.stdout


def row_of(prompt: str, secrets: dict) -> str:
    return next(n for n in sorted(secrets, key=len, reverse=True) if n in prompt)


def test_a_trl_style_reward_gets_the_responses_and_the_labels_by_name(job):
    run_dir, secrets, _ = job
    calls = [json.loads(line) for line in (run_dir.parent / "trl_style.jsonl").read_text().splitlines()]
    assert {c["step"] for c in calls} == set(range(STEPS + 1))  # every training step, and the last eval
    for call in calls:
        assert len(call["completions"]) == len(call["secret"]) == len(call["prompts"]) == len(call["ids"])
        for prompt, completion, secret, ids in zip(call["prompts"], call["completions"], call["secret"], call["ids"]):
            assert secret == secrets[row_of(prompt, secrets)]  # the label of the prompt's own row
            assert completion != prompt and ids  # a response and its token ids, not the prompt
    answered = {(c["step"], p, r) for c in calls for p, r in zip(c["prompts"], c["completions"])}
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert {(s["step"], s["prompt"], s["response"]) for s in evals} <= answered


def test_the_label_column_reaches_the_python_reward(job):
    run_dir, secrets, _ = job
    samples = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert samples
    for s in samples:
        # The rendered chat prompt holds the user's text; the reward must be that row's label.
        name = row_of(s["prompt"], secrets)
        assert s["reward"] == pytest.approx(secrets[name], abs=1e-6), s
        assert "<|assistant|>" in s["prompt"] or "assistant" in s["prompt"], "no generation prompt rendered"


def test_eval_runs_at_step_0_every_n_steps_and_at_the_end(job):
    run_dir, _, stdout = job
    records = read_metrics(run_dir / "metrics.jsonl")
    with_eval = [r["step"] for r in records if "eval/reward_mean" in r]
    assert with_eval == [0, 2, STEPS]
    final = next(r for r in records if r["step"] == STEPS)
    assert set(final) - {"step"} <= {k for k in final if k.startswith("eval/")}, "final row holds only eval/*"
    for r in records:
        if "eval/reward_mean" in r:
            assert 0.0 <= r["eval/reward_mean"] <= 1.0 and r["eval/response_len_mean"] > 0
            assert "eval/pass@1" not in r, "pass@ metrics only for 0/1 rewards"
    samples = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    steps = sorted({s["step"] for s in samples})
    assert steps == [0, 2, STEPS]
    assert all(sum(s["step"] == t for s in samples) == HOLDOUT * 2 for t in steps)
    assert "eval at step 0:" in stdout


def test_held_out_prompts_are_never_trained_on(job):
    run_dir, _, _ = job
    evaluated = {json.loads(line)["prompt"] for line in (run_dir / "eval.jsonl").read_text().splitlines()}
    trained = {json.loads(line)["prompt"] for line in (run_dir / "samples.jsonl").read_text().splitlines()}
    assert len(evaluated) == HOLDOUT and not evaluated & trained


def test_lr_follows_the_warmup(job):
    run_dir, _, _ = job
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] < STEPS]
    lrs = [r["train/lr"] for r in records]
    # One optimizer step per RL step (mini-batch = the whole rollout batch): linear warmup over 4.
    assert all(a < b for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[0] < LR / 2 and lrs[-1] <= LR + 1e-12
