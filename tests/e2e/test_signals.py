"""Ctrl-C and SIGTERM, as a user and a preempting scheduler send them: each stops the run cleanly
(no traceback, no Ray process left behind), prints the step reached, the last complete checkpoint
and the command that continues, and exits 130 or 143; the run then resumes and finishes.

Every process a run starts inherits a tag in its environment, so the test finds exactly this run's
processes (Ray's GCS, raylet, workers and actors) among those of other runs on the machine.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

STEPS = 6


def tagged_processes(tag: str) -> list[str]:
    """Command lines of the live processes whose environment holds ``tag``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if tag.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120])
        except OSError:
            continue
    return found


def no_process_left(tag: str, within_s: float = 30.0) -> list[str]:
    deadline = time.time() + within_s
    while (left := tagged_processes(tag)) and time.time() < deadline:
        time.sleep(1)
    return left


class Run:
    """``rlhf-dist train ...`` in its own session (like a terminal's foreground job), stdout read by line."""

    def __init__(self, *args: str):
        self.tag = f"RLHF_DIST_TEST_RUN={uuid.uuid4().hex}"
        name, value = self.tag.split("=")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch", "train", *args, "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, name: value},
        )
        self.lines: list[str] = []

    def wait_for_line(self, prefix: str, timeout_s: float = 600) -> None:
        deadline = time.time() + timeout_s
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(prefix):
                return
            assert time.time() < deadline, f"no line starting {prefix!r} within {timeout_s}s"
        raise AssertionError(f"the run ended before a line starting {prefix!r}:\n{''.join(self.lines)}"
                             f"{self.proc.stderr.read()[-3000:]}")

    def finish(self, timeout_s: float = 600) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, "".join(self.lines) + out, err


def steps_logged(run_dir: Path) -> list[int]:
    return sorted({json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()})


def test_sigterm_then_ctrl_c_stop_cleanly_and_the_run_resumes_to_the_end(tmp_path):
    run_dir = tmp_path / "run"

    # Preemption: SIGTERM to the driver finishes the step, checkpoints it (checkpoint.every alone would
    # write none before step 100), and exits 143.
    # The transformers engine (resumes keep it, from the run's config): signals are the driver's business,
    # and it starts ~15 s sooner than vLLM here.
    run = Run(f"steps={STEPS}", "checkpoint.every=100", "checkpoint.save_final=false", "rollout.engine=hf",
              "--run-dir", str(run_dir))
    run.wait_for_line("step 2/")
    run.proc.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == 143, out[-2000:] + err[-3000:]
    assert "Traceback" not in out + err
    stop = [line for line in err.splitlines() if line.startswith("rlhf-dist: stopped by SIGTERM after step ")]
    assert len(stop) == 1, err[-3000:]
    reached = int(stop[0].split("after step ")[1].split("/")[0])
    assert reached >= 2 and f"last complete checkpoint: {run_dir}/checkpoints/step-{reached:06d}" in stop[0]
    assert stop[0].endswith(f"continue with: rlhf-dist train --resume {run_dir}")
    assert (run_dir / "checkpoints" / f"step-{reached:06d}").is_dir()
    assert not no_process_left(run.tag), "Ray processes left after SIGTERM"

    # Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it) after a step of
    # the resumed run: exit 130, the checkpoint written on SIGTERM named, nothing left running.
    run = Run("--resume", str(run_dir))
    run.wait_for_line(f"step {reached + 1}/")
    os.killpg(run.proc.pid, signal.SIGINT)
    code, out, err = run.finish()
    assert code == 130, out[-2000:] + err[-3000:]
    assert "Traceback" not in out + err
    stop = [line for line in err.splitlines() if line.startswith("rlhf-dist: interrupted (Ctrl-C) after step ")]
    assert len(stop) == 1, err[-3000:]
    assert f"last complete checkpoint: {run_dir}/checkpoints/step-{reached:06d}" in stop[0]
    assert stop[0].endswith(f"continue with: rlhf-dist train --resume {run_dir}")
    assert not no_process_left(run.tag), "Ray processes left after Ctrl-C"

    # The command the line gave finishes the run.
    run = Run("--resume", str(run_dir))
    code, out, err = run.finish()
    assert code == 0, out[-2000:] + err[-3000:]
    assert steps_logged(run_dir) == list(range(STEPS))
    assert f"step {STEPS}/{STEPS}" in out
