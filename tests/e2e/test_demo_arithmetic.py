"""`rlhf-dist demo arithmetic --small`, as a user runs it: GRPO with the math rule must lift the
held-out accuracy of the SFT model by more than two standard errors."""

import json
import subprocess
import sys

import pyarrow.parquet as pq


def test_rl_beats_sft_on_the_held_out_split(tmp_path):
    run_dir = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "launch", "demo", "arithmetic", "--small", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    sft, rl = summary["sft_accuracy"], summary["rl_accuracy"]
    assert 0.15 <= sft <= 0.70, f"the task's difficulty is off: SFT accuracy {sft:.3f}"
    assert rl - sft > 2 * summary["gain_stderr"], f"RL {rl:.3f} does not beat SFT {sft:.3f}: {summary}"
    assert summary["eval_samples"] >= 800

    train = pq.read_table(run_dir / "data" / "train.parquet").to_pylist()
    test = pq.read_table(run_dir / "data" / "test.parquet").to_pylist()
    assert len(test) >= 200 and {"messages", "answer"} <= set(test[0])
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test}
    # The accuracies are the eval metrics of the GRPO run at its first and last evaluation.
    rows = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/pass@1"] for r in rows if "eval/pass@1" in r]
    assert (evals[0], evals[-1]) == (sft, rl)
    assert "test accuracy after GRPO" in out.stdout
