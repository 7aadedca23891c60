"""An env whose reward depends on what the env said: after the model's first turn it names a word
("say moon moon moon"), and the second turn earns the share of its words that are that word.

The word is drawn from ``words`` by the env's seed, so it changes from sample to sample, even within
one prompt's group: a policy that does not read the env's message cannot beat chance (whichever words
it writes, the named one is each of the ``len(words)`` words equally often, so its expected reward is
at most ``1 / len(words)``, 0.25 by default), and within a group the replies that copied the word
are the ones that score. A policy that copies it can reach 1. Each word is one token of the tiny
model's tokenizer and the reward is dense (a share, not all-or-nothing), so the tiny random-init
model learns it in minutes. Used by examples/multiturn_env.yaml and the e2e tests.
"""

import random

from rlhf_dist.envs import Step

WORDS = ("pea", "tree", "bird", "moon")


class WordEchoEnv:
    def __init__(self, row: dict, words: list[str] | None = None):
        self.words = list(words or WORDS)
        self.word, self.asked = None, False
        self.seed = 0  # set by the rollout worker before reset(): fixed by (run seed, step, prompt, sample)

    def reset(self) -> None:
        """Nothing follows the prompt: the model speaks first."""
        self.word = random.Random(self.seed).choice(self.words)

    def step(self, reply: str) -> Step:
        if not self.asked:
            self.asked = True
            return Step(observation="say" + f" {self.word}" * 8)
        said = reply.split()
        share = sum(w == self.word for w in said) / max(1, len(said))
        return Step(reward=share, done=True, info={"word": self.word})

