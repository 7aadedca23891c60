"""Envs and tools that misbehave on purpose, for the failure tests (importable by an isolated env's
process, which imports them by path)."""

import os
import time

from rlhf_dist.envs import Step, tool


class DyingEnv:
    """Calls ``os._exit`` in its first step when the row says ``die`` (on the first attempt only)."""

    def __init__(self, row):
        self.row = row

    def reset(self):
        return None

    def step(self, reply):
        if self.row.get("die") and self.seed == self.row["die_seed"]:
            os._exit(3)
        return Step(reward=1.0, done=True)

    @tool
    def lookup(self, key: str) -> str:
        """Look a key up.

        Args:
            key: what to look up
        """
        return f"{key}={self.seed}"


def sleepy(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: how long to sleep
    """
    time.sleep(seconds)
    return "awake"


def huge(n: int) -> str:
    """Answer with n megabytes.

    Args:
        n: megabytes
    """
    return "x" * (n << 20)
