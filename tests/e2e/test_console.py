"""The console of a default run, as a user sees it: the tool's own lines, with Ray, vLLM, DeepSpeed
and transformers in RUN_DIR/logs/.

"Ours" is defined line by line (`ours`): a startup phase line ending in its time ("starting Ray
(5.1 s)"), `prepared ...`, step lines, eval and checkpoint notes, anything after our prefix
``rlhf-dist:`` (our warnings, and library warnings that matter, passed through once in our words),
and the summary from its first line ("N steps logged") to the outputs line. Blank lines don't count.
"""

import re
import subprocess
import sys

OUR_LINES = [
    re.compile(r"^[a-zA-Z][^\[\]|]* \(\d+(\.\d)? s\)$"),  # a phase line
    re.compile(r"^prepared \S+: "),
    re.compile(r"^step \d+/\d+  reward "),
    re.compile(r"^eval at step \d+: "),
    re.compile(r"^checkpoint \S+/checkpoints/step-\d+ \(\d"),
    re.compile(r"^rlhf-dist: "),
    re.compile(r"^resuming "),
]
SUMMARY_START, SUMMARY_END = re.compile(r"^\d+ steps logged \("), re.compile(r"^outputs: ")


def classify(text: str) -> tuple[list[str], list[str]]:
    """(our lines, third-party lines) of a console transcript."""
    ours, theirs, in_summary = [], [], False
    for line in text.splitlines():
        if not line.strip():
            continue
        in_summary = in_summary or bool(SUMMARY_START.match(line))
        (ours if in_summary or any(p.match(line) for p in OUR_LINES) else theirs).append(line)
        if SUMMARY_END.match(line):
            in_summary = False
    return ours, theirs


def test_classify_counts_library_lines_as_theirs():
    transcript = "\n".join([
        "starting Ray (5.1 s)",
        "2026-11-24 23:00:11,793\tINFO worker.py:2038 -- Started a local Ray instance.",
        "(RolloutWorker pid=26859) INFO 11-24 23:01:10 [model.py:733] Resolved architecture: LlamaForCausalLM",
        "step 1/3  reward 0.079  gold 0.079  kl 5.49e-13  mismatch 1e-07  3.2s",
        "Loading weights: 100%|##########| 21/21 [00:00<00:00, 5674.92it/s]",
        "3 steps logged (0-2); windows of 1 step", "", "metric  first 1  last 1  change",
        "outputs: runs/x/ (config.yaml)",
    ])
    ours, theirs = classify(transcript)
    assert len(ours) == 5 and len(theirs) == 3


def test_a_default_run_speaks_in_our_voice_and_logs_the_libraries_to_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "launch", "train", "steps=3", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=900,
    )
    transcript = out.stdout + out.stderr
    assert out.returncode == 0, transcript[-4000:]
    ours, theirs = classify(transcript)
    share = len(theirs) / (len(ours) + len(theirs))
    assert share <= 0.10, f"{len(theirs)} of {len(ours) + len(theirs)} lines are not ours:\n" + "\n".join(theirs)
    assert not theirs, "library lines on the terminal:\n" + "\n".join(theirs)

    # One line per startup phase, with its time, in our words.
    for phase in ("starting Ray (", "vLLM engine 1/1 ready (", "learners ready: ZeRO-2, 2 ranks (",
                  "reward ready: 1 scorer (", "reference model ready: 1 actor ("):
        assert any(line.startswith(phase) or phase in line for line in ours), f"no phase line {phase!r}"
    assert sum(line.startswith("step ") for line in ours) == 3
    assert "windows of 1 step" in out.stdout  # 3 steps: first 1 vs last 1, never overlapping
    outputs = next(line for line in ours if line.startswith("outputs: "))
    for entry in ("config.yaml", "metrics.jsonl", "checkpoints/", "logs/", "tiny-model/", "final/"):
        assert entry in outputs

    # The libraries' output is in RUN_DIR/logs/, one file per actor, and known noise stays there.
    logs = run_dir / "logs"
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    rollout = (logs / "rollout-0.log").read_text()
    assert "Initializing a V1 LLM engine" in rollout
    assert "RotaryEmbedding: Failed to load weights" in rollout and "RotaryEmbedding" not in transcript
    assert {"learner-0.log", "learner-1.log", "reward-0.log", "reference-0.log"} <= {p.name for p in logs.iterdir()}
    assert "untested optimizer" in (logs / "learner-0.log").read_text()
