"""What counts as the tool's own line on the console (`classify`). The default run's console is
checked against these rules on the run tests/e2e/test_train.py makes anyway (one run, both checks):
`test_a_default_run_speaks_in_our_voice_and_logs_the_libraries_to_the_run_dir`.

"Ours" is defined line by line (`ours`): a startup phase line ending in its time ("starting Ray
(5.1 s)"), `prepared ...`, step lines, eval and checkpoint notes, anything after our prefix
``rlhf-dist:`` (our warnings, and library warnings that matter, passed through once in our words),
and the summary from its first line ("N steps logged") to the outputs line. Blank lines don't count.
"""

import re

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
