"""gTop-k: a tree of pairwise merges that keeps the global top-k, then a
broadcast of the final k entries from the root.

P must be a power of two; L = log2 P.

    acc = g + e ;  (idx, val) = topk_abs(acc, k) ;  e = acc with idx zeroed
    round j = 0..L-1 (gap = 2^j):
        rank r with r mod 2gap == gap sends its current k entries to r - gap
        and leaves the tree; rank r with r mod 2gap == 0 receives them,
        merges (values at a common index add) and keeps the top-k of the union
    binomial broadcast of the root's k entries (round j: ranks r < 2^j send
    to r + 2^j), point-to-point
    out = scatter(final idx, final val) / P
    residual: e plus this rank's own selected values whose index is not in
    the final set (what was merged away inside the tree is not restored)

Every message is one packed buffer of exactly k (int32 global index, value)
pairs. Per rank r: 1 reduce message if r != 0, and L - bitlength(r)
broadcast messages (costmodel.gtopk_rank); the critical path is 2L messages
of k entries (costmodel.gtopk_path).

`GTopk` (the class) holds one rank's state: as `TopkA`'s, with this
allreduce.
"""
from __future__ import annotations

import numpy as np

from .. import kernels as K
from .topka import TopkA

TAG_REDUCE = 0x6701
TAG_BCAST = 0x6702


def is_power_of_two(p: int) -> bool:
    return p >= 1 and p & (p - 1) == 0


def gtopk(grad, residual, k, *, channel, out=None):
    """Sparse allreduce of `grad` with error feedback in `residual` (in place).

    grad, residual: 1-D float arrays of the same length n < 2**31; k entries
    per message, 1 <= k <= n; the channel's size must be a power of two.
    Returns `out` (allocated when None): the final k entries divided by P,
    identical on all ranks.
    """
    xp = channel.backend.xp
    p, r, n = channel.size, channel.rank, grad.size
    if not is_power_of_two(p):
        raise ValueError(f"gtopk needs a power-of-two number of ranks, got {p}")
    if not 1 <= k <= n:
        raise ValueError(f"gtopk: k = {k} must be in [1, {n}]")
    own_idx, own_val = K.ef_select(grad, residual, k)
    idx, val = tree_reduce(own_idx, own_val, k, channel, xp)
    idx, val = broadcast(idx, val, k, grad.dtype, channel, xp)
    # own selections merged away are this rank's error again
    lost = ~contains(idx, own_idx, xp)
    residual[own_idx[lost]] = own_val[lost]
    if out is None:
        out = xp.zeros(n, grad.dtype)
    else:
        out.fill(0)
    out[idx] = val
    if p > 1:
        out /= p
    return out


class GTopk(TopkA):
    """gTop-k state on one rank: residual E and k (the channel's size must
    be a power of two)."""

    name = "gtopk"

    def allreduce(self, g, out=None):
        """out <- the gTop-k mean over all ranks of g (+ residual); E updated."""
        return gtopk(g, self.E, self.k, channel=self.channel, out=out)


def tree_reduce(idx, val, k, channel, xp):
    """log2 P rounds; rank 0 ends with the merged global top-k."""
    p, r = channel.size, channel.rank
    nbytes = K.packed_nbytes(k, val.dtype)
    gap = 1
    while gap < p:
        if r % (2 * gap) == gap:
            channel.Send(K.pack(idx, val), r - gap, tag=TAG_REDUCE)
            return None, None
        buf = xp.empty(nbytes, np.uint8)
        channel.Recv(buf, source=r + gap, tag=TAG_REDUCE)
        other_idx, other_val = K.unpack(buf, k, val.dtype)
        idx, val = merge_topk(idx, val, other_idx, other_val, k, xp)
        gap *= 2
    return idx, val


def merge_topk(a_idx, a_val, b_idx, b_val, k, xp):
    """Union of two selections with unique, ascending indices each (common
    indices add: a + b), cut to its top-k; indices ascending, ties to the
    lower index. The stable sort of two sorted runs is a linear merge."""
    idx = xp.concatenate((a_idx, b_idx))
    val = xp.concatenate((a_val, b_val))
    order = xp.argsort(idx, kind="stable")       # a's entry before b's at a common index
    idx, val = idx[order], val[order]
    first = xp.ones(idx.size, bool)
    first[1:] = idx[1:] != idx[:-1]
    group = xp.cumsum(first) - 1
    summed = xp.zeros(int(group[-1]) + 1, val.dtype)
    summed[group[first]] = val[first]
    summed[group[~first]] += val[~first]         # at most one repeat per index
    keep, vals = K.topk_abs(summed, k)
    return idx[first][keep].astype(np.int32), vals


def contains(sorted_idx, idx, xp):
    """Mask of idx's entries that occur in the ascending array sorted_idx."""
    pos = xp.minimum(xp.searchsorted(sorted_idx, idx), sorted_idx.size - 1)
    return sorted_idx[pos] == idx


def broadcast(idx, val, k, dtype, channel, xp):
    """Binomial tree from rank 0: in round j, ranks below 2^j send to r + 2^j."""
    p, r = channel.size, channel.rank
    buf = K.pack(idx, val) if r == 0 else xp.empty(K.packed_nbytes(k, dtype), np.uint8)
    gap = 1
    while gap < p:
        if r < gap:
            channel.Send(buf, r + gap, tag=TAG_BCAST)
        elif r < 2 * gap:
            channel.Recv(buf, source=r - gap, tag=TAG_BCAST)
        gap *= 2
    return K.unpack(buf, k, dtype)
