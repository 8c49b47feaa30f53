"""PALSGD's mixing draws u(τ) ~ U[0, 1), one per local step: a pure function
of (seed, step, rank), drawn a block of steps at a time, so a resumed run
redraws exactly the same values and there is no state to checkpoint.
"""
from __future__ import annotations

import numpy as np

DRAWS = 0x9A15      # stream tag of the PALSGD mixing draws
BLOCK = 4096        # draws generated at once (one generator per block, not per step)


def draw_block(seed: int, block: int, rank: int, same_draws: bool) -> np.ndarray:
    """U[0, 1) of local steps block*BLOCK ... (block+1)*BLOCK - 1 on `rank`
    (the same on every rank with same_draws): a pure function of its key."""
    key = [int(seed), DRAWS, int(block)] + ([] if same_draws else [1, int(rank)])
    return np.random.default_rng(key).random(BLOCK)


class MixingDraws:
    """u(τ) for local step τ; keeps the current block only, so there is no
    state to checkpoint: a resumed run redraws exactly the same values."""

    def __init__(self, seed: int, rank: int, same_draws: bool):
        self.key = (seed, rank, same_draws)
        self.block, self.values = -1, None

    def __call__(self, tau: int) -> float:
        b = tau // BLOCK
        if b != self.block:
            seed, rank, same = self.key
            self.block, self.values = b, draw_block(seed, b, rank, same)
        return float(self.values[tau % BLOCK])


def mixing_draw(seed: int, tau: int, rank: int, same_draws: bool) -> float:
    """u(τ) on `rank`, without a cache (for tests and tools)."""
    return float(draw_block(seed, tau // BLOCK, rank, same_draws)[tau % BLOCK])
