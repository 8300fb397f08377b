"""What a PPO step samples: the prompts (endless shuffled epochs over the train split) and
each prompt's cap on new tokens (the recipe's LengthSampler)."""

from __future__ import annotations

import numpy as np


def sample_max_new_tokens(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """Per-prompt caps drawn uniformly from [low, high), as the recipe's LengthSampler.

    Generating a batch up to the largest cap and cutting each response at its own cap samples
    the same distribution as one-at-a-time generation: the law of a prefix does not depend on
    how long generation would have continued.
    """
    return rng.integers(low, high, size=n)


class PromptSampler:
    """Endless shuffled epochs over the train split; its state is a (epoch, position) pair."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order()
            take = order[self.position : self.position + self.batch_size - len(out)]
            out.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
