"""A deterministic, resumable order over a dataset: a fresh seeded permutation every epoch.

The whole position is one integer — how many examples have been consumed — so a checkpoint stores
the cursor and a resumed run draws exactly the examples the uninterrupted run would have drawn.
"""

from __future__ import annotations

import numpy as np


class EpochCursor:
    def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
        if num_examples <= 0:
            raise ValueError("the dataset is empty")
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                           if self.shuffle else np.arange(self.num_examples)}
        return self._perms[epoch]

    def indices(self, cursor: int, count: int) -> list[int]:
        """Dataset indices of examples cursor .. cursor+count-1 (crossing epochs as needed)."""
        out = []
        for position in range(cursor, cursor + count):
            epoch, offset = divmod(position, self.num_examples)
            out.append(int(self._perm(epoch)[offset]))
        return out
