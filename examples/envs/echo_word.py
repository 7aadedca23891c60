"""An env whose reward depends on what the env said: it names a word after the model's first turn,
and the second turn earns 1 when it opens with that word. A policy that ignores the env cannot
beat chance (1 in ``len(words)``). Used by examples/multiturn_env.yaml and the e2e tests.
"""

import random

from rlhf_dist.envs import Step

WORDS = ("cat", "dog", "sun", "moon")


class EchoWordEnv:
    def __init__(self, row: dict, words: list[str] | None = None):
        self.words = list(words or WORDS)
        self.word = None

    def reset(self) -> None:
        """Nothing follows the prompt: the model speaks first."""
        self.word = random.Random(self.seed).choice(self.words)

    def step(self, reply: str) -> Step:
        if self.word is not None and not getattr(self, "asked", False):
            self.asked = True
            return Step(observation=f"say {self.word}")
        said = reply.split()[:1]
        return Step(reward=float(said == [self.word]), done=True, info={"word": self.word})
