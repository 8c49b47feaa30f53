"""TopkA: every rank's exact local top-k, all-gathered and summed.

    acc = g + e ;  (idx, val) = topk_abs(acc, k) ;  e = acc with idx zeroed
    out = (1/P) * sum over ranks r of scatter(idx_r, val_r)

One Allgather of k packed (int32 global index, value) pairs per rank; the
result has up to P*k nonzeros, and an index chosen by several ranks sums
their values (scatter-add). Booked as a library allgather: (P-1)*k*(4+s)
bytes and ceil(log2 P) messages per rank (costmodel.topka).

`TopkA` (the class) holds one rank's state for repeated calls: the residual
E and k = costmodel.select_count(n, density); the sparse allreduces are
looked up by name in comm/sparse_allreduce.py.
"""
from __future__ import annotations

import numpy as np

from .. import kernels as K
from .costmodel import select_count


def topka(grad, residual, k, *, channel, out=None):
    """Sparse allreduce of `grad` with error feedback in `residual` (in place).

    grad, residual: 1-D float arrays of the same length n < 2**31 (residual is
    overwritten with grad + residual minus the entries this rank selected).
    k: entries each rank selects, 1 <= k <= n. Returns `out` (allocated when
    None): the average over ranks of every rank's selection, identical on
    all ranks.
    """
    xp = channel.backend.xp
    n = grad.size
    if not 1 <= k <= n:
        raise ValueError(f"topka: k = {k} must be in [1, {n}]")
    idx, val = K.ef_select(grad, residual, k)
    msg = K.pack(idx, val)
    gathered = xp.empty((channel.size, msg.size), np.uint8)
    channel.Allgather(msg, gathered)
    return combine(gathered, k, grad.dtype, channel.size, n, xp, out)


def combine(gathered, k, dtype, p, n, xp, out=None):
    """Scatter-add the P packed selections in rank order, divide by P."""
    if out is None:
        out = xp.zeros(n, dtype)
    else:
        out.fill(0)
    parts = [K.unpack(gathered[r], k, dtype) for r in range(p)]
    idx = xp.concatenate([i for i, _ in parts])
    val = xp.concatenate([v for _, v in parts])
    K.scatter_add(out, idx, val)          # an index sent by several ranks sums
    if p > 1:
        out /= p
    return out


class TopkA:
    """TopkA state on one rank: residual E (n values) and k. Works on NumPy
    or CuPy arrays of float32/float64 (`xp` defaults to the channel's)."""

    name = "topka"

    def __init__(self, n, dtype, density, *, channel, xp=None):
        if not 0 < density <= 1:
            raise ValueError(f"density: must be in (0, 1], got {density}")
        self.n, self.dtype, self.density = int(n), np.dtype(dtype), float(density)
        self.k = select_count(self.n, self.density)
        self.channel = channel
        self.xp = xp or channel.backend.xp
        self.E = self.xp.zeros(self.n, self.dtype)

    @classmethod
    def from_options(cls, n, dtype, opts, *, channel, xp=None):
        """Built from the [algo] options (density)."""
        return cls(n, dtype, opts.density, channel=channel, xp=xp)

    def allreduce(self, g, out=None):
        """out <- the TopkA mean over all ranks of g (+ residual); E updated.
        Collective; out may be g itself. Returns out."""
        return topka(g, self.E, self.k, channel=self.channel, out=out)

    def residual(self):
        """This rank's residual: a view, updated in place by every allreduce."""
        return self.E

    def reset(self):
        """Fresh state (a resume at another world size): zero residual."""
        self.E.fill(0)

    def state_dict(self) -> dict:
        """Per-rank state under its checkpoint names: the residual (a view)."""
        return {"residual": self.E}

    def load_state_dict(self, state: dict):
        self.E[...] = self.xp.asarray(state["residual"])

    def summary(self) -> dict:
        """Fields for summary.json."""
        return {"density": self.density, "k": self.k}
