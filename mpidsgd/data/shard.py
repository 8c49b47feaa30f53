"""Shard: this rank's part of the training set, and the batches drawn from it.

The data order is a pure function of (seed, epoch, rank): epoch e visits the
shard in the permutation drawn by np.random.default_rng([seed, SHUFFLE,
epoch, rank]), batch k being positions perm[k*B:(k+1)*B]. So (epoch, pos) is
all a checkpoint needs to restore the exact order.
"""
from __future__ import annotations

import numpy as np

from ..config import ConfigError

SHUFFLE = 0x5F1   # stream tag of the per-epoch shuffle


def shard_range(n_total: int, rank: int, size: int):
    """[lo, hi) of `rank`'s contiguous shard: floor division, disjoint, complete."""
    return n_total * rank // size, n_total * (rank + 1) // size


def train_part(rank: int, size: int, skip: int = 0):
    """(data rank, data ranks) of the training split: the first `skip` ranks
    (a parameter server) hold no training data, data rank None; the others
    split the set as ranks 0..size-skip-1 of a world without them."""
    return (rank - skip if rank >= skip else None), size - skip


def train_range(n_total: int, part):
    """[lo, hi) of the training rows of data part `part` (empty for None)."""
    r, k = part
    return (0, 0) if r is None else shard_range(n_total, r, k)


class Shard:
    """This rank's training samples and its position in the data order.

    Attributes: `X`, `y` (backend arrays; X is (n, *input_shape)), `ids`
    (numpy int64 indices of the samples in the training set, 0..n_train-1),
    `n`, `batch_size`, `steps_per_epoch` (agreed over ranks), `epoch` and
    `pos` (batches taken in the current epoch). An epoch is exactly
    `steps_per_epoch` batches; the samples a rank has beyond that are left
    out of that epoch (the last partial batch is dropped), and a different
    permutation leaves out different ones next epoch.
    """

    def __init__(self, X, y, ids, batch_size: int, steps_per_epoch: int, *,
                 seed: int = 0, rank: int = 0, backend=None):
        self.X, self.y = X, y
        self.ids = np.asarray(ids, dtype=np.int64)
        self.n = int(len(self.ids))
        self.batch_size = int(batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        # a rank holding no training data (a parameter server) has n = 0
        if self.n and not 1 <= self.steps_per_epoch * self.batch_size <= self.n:
            raise ValueError(f"steps_per_epoch {steps_per_epoch} x batch {batch_size} "
                             f"does not fit a shard of {self.n} samples")
        self.seed, self.rank = int(seed), int(rank)
        self.xp = backend.xp if backend is not None else np
        self.epoch = 0
        self.pos = 0
        self._perm_epoch = None

    @property
    def epochs_done(self) -> float:
        """Epochs completed, fractional: epoch + pos / steps_per_epoch."""
        return self.epoch + self.pos / self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The visiting order of `epoch` (numpy int64 positions in the shard)."""
        rng = np.random.default_rng([self.seed, SHUFFLE, int(epoch), self.rank])
        return rng.permutation(self.n).astype(np.int64)

    def _ensure_perm(self):
        # one permutation per epoch, also uploaded once so that gathering a
        # batch on a GPU never sends indices host -> device
        if self._perm_epoch != self.epoch:
            self._perm = self.permutation(self.epoch)
            self._perm_dev = self._perm if self.xp is np else self.xp.asarray(self._perm)
            self._perm_epoch = self.epoch

    def next_batch(self):
        """(X, y, idx) of the next batch; idx = numpy int64 positions in the
        shard (for tableau methods). Moves to the next epoch, with a new
        permutation, after `steps_per_epoch` batches."""
        self._ensure_perm()
        a, b = self.pos * self.batch_size, (self.pos + 1) * self.batch_size
        sel = self._perm_dev[a:b]
        out = (self.X[sel], self.y[sel], self._perm[a:b])
        self.advance()
        return out

    def advance(self):
        """Move the data order on by one batch without gathering it (a
        method that draws its own batches still keeps epoch and pos)."""
        self.pos += 1
        if self.pos == self.steps_per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0

    def iter_batches(self, batch_size: int | None = None):
        """Ordered full pass over the shard, final partial batch included:
        yields (X, y, idx) with contiguous views; touches no epoch state."""
        B = int(batch_size or self.batch_size)
        for a in range(0, self.n, B):
            b = min(a + B, self.n)
            yield self.X[a:b], self.y[a:b], np.arange(a, b, dtype=np.int64)

    # -- checkpointing -------------------------------------------------------
    def state_dict(self) -> dict:
        """Numpy scalars that restore the exact data order."""
        return {"epoch": np.int64(self.epoch), "pos": np.int64(self.pos),
                "n": np.int64(self.n), "batch_size": np.int64(self.batch_size),
                "steps_per_epoch": np.int64(self.steps_per_epoch),
                "seed": np.int64(self.seed), "rank": np.int64(self.rank)}

    def load_state_dict(self, d: dict):
        """Resume at (epoch, pos); the shard must be the one that was saved."""
        for key in ("n", "batch_size", "steps_per_epoch", "seed", "rank"):
            if key in d and int(d[key]) != getattr(self, key):
                raise ConfigError(f"checkpoint data state does not match this shard: "
                                  f"{key} = {int(d[key])} saved, {getattr(self, key)} now")
        epoch, pos = int(d["epoch"]), int(d["pos"])
        if epoch < 0 or not 0 <= pos < self.steps_per_epoch:
            raise ConfigError(f"checkpoint data state is invalid: epoch {epoch}, pos {pos}")
        self.epoch, self.pos = epoch, pos
