"""`rlhf-dist ... | head` and other readers that leave early: the command ends quietly, exit 0."""

import subprocess
import sys


def test_a_closed_stdout_ends_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "launch", "config", "show", "--defaults"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == "", err
