"""The gradient tableau of the variance-reduced methods (centralvr, saga, svrg's
stored snapshot): stored data gradients, one entry per sample or per fixed block.

A model with the capability `per_sample_derivs` (the linear models) stores,
per sample, its derivative dℓ/dz of the data loss w.r.t. the linear output,
1 number per sample (C for softmax): the gradient is X_iᵀ·entry, so the
table costs n (or n·C) numbers instead of n·d. Any other model stores blocks:
block b = shard positions [bB, (b+1)B) for b < steps_per_epoch, entry = the
block's mean data gradient, (n/B)·d numbers.
"""
from __future__ import annotations


class Tableau:
    """Stored data gradients of this rank's shard; `kind` is samples | blocks."""

    def __init__(self, kind, model, shard, xp):
        self.kind, self.model, self.xp = kind, model, xp
        self.X, self.y, self.B = shard.X, shard.y, shard.batch_size
        if kind == "samples":
            shape = model.derivs_shape(shard.n)
        else:
            shape = (shard.steps_per_epoch, model.layout.size)
        self.slots = shape[0]
        self.T = xp.zeros(shape, dtype=model.dtype)

    @property
    def numbers(self) -> int:
        return int(self.T.size)

    def block(self, b):
        sl = slice(b * self.B, (b + 1) * self.B)
        return self.X[sl], self.y[sl]

    def data_grad(self, X, E, out):
        """out = mean data gradient of the batch from its fresh entries E."""
        if self.kind == "samples":
            self.model.grad_from_derivs(X, E, out)
        else:
            out[...] = E

    def correction(self, X, E, ids, out):
        """out = mean over the batch of (fresh - stored) data gradients."""
        if self.kind == "samples":
            self.model.grad_from_derivs(X, E - self.T[ids], out)
        else:
            self.xp.subtract(E, self.T[ids[0]], out=out)

    def store(self, ids, E):
        if self.kind == "samples":
            self.T[ids] = E
        else:
            self.T[ids[0]] = E

    def mean(self, out):
        """out = mean of the entries as a data gradient (every slot counts)."""
        if self.kind == "samples":
            self.model.grad_from_derivs(self.X, self.T, out)
        else:
            self.T.mean(axis=0, out=out)
