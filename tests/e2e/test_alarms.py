"""The collapse and no-signal alarms in real runs, through the CLI (issue 21: nothing trains silently
on garbage). A learning rate of 1 makes the policy diverge: the KL alarm fires, and the run stops
saying the policy diverged, not with a transport fault. A constant reward gives no learning signal:
the alarm says so after monitor.no_signal_steps steps. The no-signal run uses the hf engine (its
subject is the driver's bookkeeping, not vLLM), which starts in seconds instead of ~20 s.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rlhf(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(cwd), str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "launch", "train", *args, "--no-progress"], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": path})


def test_a_diverging_policy_fires_the_kl_alarm_and_is_reported_as_divergence(tmp_path):
    out = rlhf(tmp_path, "steps=6", "learner.optimizer.lr=1", "recovery.max_nonfinite_steps=2", "--run-dir", "run")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "rlhf-dist: warning: KL alarm at step" in out.stderr
    assert "rlhf-dist: run failed: the policy diverged: KL to the reference" in out.stderr
    assert "Lower learner.optimizer.lr (now 1)" in out.stderr and "Traceback" not in out.stderr


def test_a_constant_reward_fires_the_no_signal_alarm(tmp_path):
    (tmp_path / "flat.py").write_text("def zero(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    out = rlhf(tmp_path, "steps=4", "rollout.engine=hf", "reward.components=[{type: python, path: 'flat:zero'}]",
               "reward.gold=null", "--run-dir", "run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ("rlhf-dist: warning: no learning signal: every sample of every prompt got the same reward (0) for 3 steps "
            "(steps 0..2)") in out.stderr
    assert "for 4 steps (steps 0..3)" in out.stderr  # and again while it lasts
    assert "KL alarm" not in out.stderr and "entropy alarm" not in out.stderr
