"""An env whose reward depends on what the env said: after the model's first turn it names a
letter ("say eeeeee"), and the second turn earns the share of its characters that are that letter.

A policy that ignores the env cannot beat chance: whatever letters it writes, the named one is each
of the ``len(letters)`` letters equally often, so its expected reward is at most ``1 / len(letters)``
(0.25 by default). A policy that reads the env's message can reach 1. The reward is dense (a share,
not all-or-nothing), so the tiny random-init model learns it in minutes. Used by
examples/multiturn_env.yaml and the e2e tests.
"""

import hashlib
import json

from rlhf_dist.envs import Step

LETTERS = ("a", "e", "o", "t")


class LetterEchoEnv:
    def __init__(self, row: dict, letters: list[str] | None = None):
        self.letters = list(letters or LETTERS)
        # The letter is fixed by the prompt, so every sample of a group (GRPO's baseline) meets the
        # same one and the group compares replies, not letters; prompts spread over the letters.
        digest = hashlib.blake2b(json.dumps(row.get("prompt"), sort_keys=True).encode(), digest_size=4).digest()
        self.letter = self.letters[int.from_bytes(digest, "little") % len(self.letters)]
        self.asked = False

    def reset(self) -> None:
        """Nothing follows the prompt: the model speaks first."""

    def step(self, reply: str) -> Step:
        if not self.asked:
            self.asked = True
            return Step(observation=f"say {self.letter * 6}")
        chars = [c for c in reply if not c.isspace()]
        share = sum(c == self.letter for c in chars) / max(1, len(chars))
        return Step(reward=share, done=True, info={"letter": self.letter})
