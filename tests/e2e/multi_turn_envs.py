"""Envs and tools of the multi-turn e2e tests (imported by path by the rollout workers)."""

import os
import random
import time

from rlhf_dist.envs import Step

PHRASE = "yes yes yes"


class CanaryEnv:
    """Two turns. The first is rewarded by its share of "a" characters; a good one (share above 0.1)
    is answered with PHRASE, any other with "no". PHRASE thus comes with high rewards: a learner that
    trains on env tokens (a leaked mask) learns to write it, one that trains on model tokens only
    does not."""

    def __init__(self, row):
        self.share = None

    def reset(self):
        return None

    def step(self, reply):
        if self.share is not None:
            return Step(done=True)
        chars = [c for c in reply if not c.isspace()]
        self.share = sum(c == "a" for c in chars) / max(1, len(chars))
        return Step(observation=PHRASE if self.share > 0.1 else "no", reward=self.share)


class ChaosEnv:
    """One turn rewarded by its share of "a"; raises in 10% of its steps and, when ``exit_frac`` is
    set (process isolation), calls os._exit in that share of them. Its randomness is its own seed's."""

    def __init__(self, row, raise_frac: float = 0.1, exit_frac: float = 0.0):
        self.raise_frac, self.exit_frac = raise_frac, exit_frac

    def reset(self):
        self.rng = random.Random(self.seed)
        return None

    def step(self, reply):
        draw = self.rng.random()
        if draw < self.exit_frac:
            os._exit(7)
        if draw < self.exit_frac + self.raise_frac:
            raise RuntimeError("chaos: the env raised")
        chars = [c for c in reply if not c.isspace()]
        return Step(reward=sum(c == "a" for c in chars) / max(1, len(chars)), done=True)


class BrokenEnv:
    """Raises in reset, every time."""

    def __init__(self, row):
        pass

    def reset(self):
        raise ValueError("this env cannot start: no board file")

    def step(self, reply):
        return Step(done=True)


def flaky_sleep(text: str) -> str:
    """Echo the text; sleeps forever 5% of the time.

    Args:
        text: what to echo
    """
    if random.random() < 0.05:
        time.sleep(10**6)
    return text


def flood(n: int) -> str:
    """Answer with 10 MB of text.

    Args:
        n: ignored
    """
    return "a" * (10 << 20)
