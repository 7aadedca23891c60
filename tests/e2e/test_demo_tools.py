"""`rlhf-dist demo tools --small`, as a user runs it: after SFT on tool-call demonstrations, multi-turn
GRPO must lift the held-out accuracy by more than two standard errors, the policy must call the tool
(and be helpless without its answer), and every evaluated trajectory is in eval.jsonl."""

import json
import subprocess
import sys

import pyarrow.parquet as pq


def test_rl_with_a_tool_beats_sft_on_held_out_problems(tmp_path):
    run_dir = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "launch", "demo", "tools", "--small", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    sft, rl = summary["sft_accuracy"], summary["rl_accuracy"]
    assert 0.2 <= sft <= 0.9, f"the task's difficulty is off: SFT accuracy {sft:.3f}"
    assert rl - sft > 2 * summary["gain_stderr"], f"RL {rl:.3f} does not beat SFT {sft:.3f}: {summary}"
    assert summary["no_tool_accuracy"] < 0.05 and summary["tool_call_rate"] > 0.5, summary
    for key in ("sft_accuracy_stderr", "rl_accuracy_stderr", "no_tool_accuracy_stderr", "tool_call_rate_stderr"):
        assert 0 <= summary[key] < 0.1, key
    assert summary["curve"][0] == {"step": 0, "accuracy": sft} and summary["curve"][-1]["accuracy"] == rl

    train = pq.read_table(run_dir / "data" / "train.parquet").to_pylist()
    test = pq.read_table(run_dir / "data" / "test.parquet").to_pylist()
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test}
    last = [json.loads(line) for line in (run_dir / "grpo" / "eval.jsonl").read_text().splitlines()]
    last = [row for row in last if row["step"] == summary["curve"][-1]["step"]]
    assert len(last) == summary["eval_samples"]
    called = [row for row in last if any(m["role"] == "tool" for m in row["transcript"])]
    assert called and all(row["turns"] >= 2 and row["model_tokens"] < row["total_tokens"] for row in called)
    assert "test accuracy after GRPO" in out.stdout
