"""SAGA baseline (reconstruction, ours): CentralVR-Sync with the table mean
updated at every step instead of frozen for the epoch.

Each rank keeps a running mean a of its tableau, reset at the start of every
epoch to the global ḡ from the last allreduce; after each step
a += (1/n_k) Σ_{distinct i in batch} (fresh_i - stored_i), every distinct sample
counted once even if drawn twice. So at P = 1, a is the exact mean of the table
(SAGA); at P > 1 it is the global mean plus this rank's change of its table.

    x -= lr (g_i(x) - T[i] + a + l2 x);  a += (g_i - T[i]) / n_k;  T[i] = g_i

Sampling: algo.sampling = replacement (uniform draws, as in the SAGA paper) or
permutation. Epoch 0 fills the table with plain SGD steps, as in CentralVR.
"""
from __future__ import annotations

import numpy as np

from .base import register
from .vrbase import VRBase


@register
class SAGA(VRBase):
    name = "saga"

    def __init__(self, *args):
        super().__init__(*args)
        self.a = self.xp.zeros_like(self.params)
        self.tmp = self.xp.zeros_like(self.params)

    def begin_epoch(self, shard):
        if self.epoch > 0:
            self.a[...] = self.gbar

    def update(self, X, y, ids):
        # the correction is anchored at the running mean a, moved before each store
        return self.tableau_step(X, y, ids, self.a,
                                 on_fresh=self.update_mean if self.epoch > 0 else None)

    def update_mean(self, X, E, ids):
        """a += (1/slots) Σ over DISTINCT ids of (fresh - stored) entries."""
        tab = self.tab
        if tab.kind == "samples":
            u, first = np.unique(ids, return_index=True)
            delta = E[first] - tab.T[u]
            self.model.grad_from_derivs(X[first], delta, self.tmp, scale=len(u) / tab.slots)
            self.a += self.tmp
        else:
            self.xp.subtract(E, tab.T[ids[0]], out=self.tmp)
            self.tmp /= tab.slots
            self.a += self.tmp

    def end_epoch(self, shard, last):
        self.tab.mean(self.gk)
        self.average(self.params, self.gk, self.gbar)

    def extra_state(self):
        return {}, {"a": self.a}

    def load_extra_state(self, shared, local):
        self.a[...] = self.xp.asarray(local["a"])
