"""The resumable prompt sampler: which dataset indices each step trains on.

:class:`PromptSampler` hands out dataset indices in batches, one seeded permutation per epoch; its
state is a few integers that a checkpoint saves, so that a resumed run sees exactly the prompts
the uninterrupted one would have seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlhf_dist.data.reader import DataError


class PromptSampler:
    """Batches of dataset indices: a seeded permutation per epoch, walked without replacement.

    Epoch ``e`` visits every index once, in the order of a permutation seeded by ``(seed, e)``
    (identity when ``shuffle`` is off). A batch that runs past the end of an epoch continues with
    the next epoch's permutation.
    """

    def __init__(self, num_prompts: int, seed: int, shuffle: bool = True) -> None:
        if num_prompts < 1:
            raise DataError(f"cannot sample from {num_prompts} prompts; the prompt set is empty")
        self.num_prompts, self.seed, self.shuffle = num_prompts, seed, shuffle
        self.epoch = 0  # the epoch the next index comes from
        self.cursor = 0  # position of the next index in that epoch's permutation
        self.consumed = 0  # indices handed out since the start of the run
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_prompts)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_prompts)

    def next_batch(self, n: int) -> list[int]:
        """The next ``n`` dataset indices."""
        if n < 0:
            raise ValueError(f"batch size must be >= 0, got {n}")
        batch: list[int] = []
        while len(batch) < n:
            if self.cursor == self.num_prompts:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(n - len(batch), self.num_prompts - self.cursor)
            batch += self._order[self.cursor : self.cursor + take].tolist()
            self.cursor += take
        self.consumed += n
        return batch

    def state_dict(self) -> dict[str, int | bool]:
        """Plain ints (JSON-safe) from which :meth:`load_state_dict` resumes exactly."""
        return {
            "num_prompts": self.num_prompts,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the dataset size, seed and shuffle must match the saved run."""
        saved = (state["num_prompts"], state["seed"], state["shuffle"])
        if saved != (self.num_prompts, self.seed, self.shuffle):
            raise DataError(
                f"the checkpoint's prompt sampler was saved for (num_prompts, seed, shuffle) = {saved}, "
                f"but this run has {(self.num_prompts, self.seed, self.shuffle)}; resume with the same "
                "data.prompts, data.max_prompt_tokens/overlong, seed and data.shuffle"
            )
        if not 0 <= state["cursor"] <= self.num_prompts:
            raise DataError(f"corrupt sampler state: cursor {state['cursor']} outside [0, {self.num_prompts}]")
        self.epoch, self.cursor, self.consumed = state["epoch"], state["cursor"], state["consumed"]
        self._order = self._permutation(self.epoch)
