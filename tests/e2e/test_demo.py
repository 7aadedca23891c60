"""`rlhf-dist demo --small`: SFT -> RM -> PPO end to end, as a user runs it."""

import json
import subprocess
import sys


def test_demo_small_end_to_end(tmp_path):
    run_dir = tmp_path / "demo"
    out = subprocess.run(
        [sys.executable, "-m", "launch", "demo", "--small", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "== demo summary" in out.stdout
    s = json.loads((run_dir / "demo_summary.json").read_text())
    assert s["sft/eval_loss_end"] < s["sft/eval_loss_start"]
    assert s["rm/eval_accuracy"] >= 0.85
    assert s["ppo/proxy_last"] > s["ppo/proxy_first"]
    assert s["ppo/gold_last"] > s["ppo/gold_first"], "PPO against the learned RM did not raise the gold reward"
    for stage in ("sft", "rm", "ppo"):
        assert (run_dir / stage / "metrics.jsonl").exists()
    assert (run_dir / "rm" / "model" / "reward_normalization.json").exists()
