"""Spar-All-Gather (SparDL teams) and the final sparse block all-gather.

With d teams, the d ranks holding the same team-rank r form a SAG group;
after Spar-Reduce-Scatter each holds block r summed over its own team. SAG
merges those d partial blocks into one selection of at most k_b entries,
identical on every member:

- B-SAG (`bsag`, any d): each member takes its top-h, the group all-gathers
  the d selections (Bruck), every member coalesces them in team order and
  keeps the top-k_b of the union when it is larger. h adapts per group.
- R-SAG (`rsag`, d a power of two): recursive doubling; at step s partners
  t and t xor 2^s exchange their current k_b-entry selections, coalesce, keep
  the top-k_b and each add dropped / 2^(s+1) to their residual block.

`block_allgather` then gathers the final blocks over the team, each padded to
k_b entries with index -1 (skipped by scatter_add), so every message has a
static size. Coalescing adds the selections one after another in a fixed
order (each with unique indices), so every member's sums are bit-identical,
also with CUDA atomics.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..kernels import checks, pack, scatter_add, topk_abs, unpack
from ..kernels import coalesce as kernels_coalesce
from .bruck import bruck_allgather

TAG_SAG = 0x5B3
TAG_AG = 0x5B4


def coalesce(sels, xp):
    """Union of sparse selections [(idx, val), ...] with summed values.

    Returns (idx, val): the union's indices ascending and the sums, added in
    list order starting from zero. Indices are unique within each selection
    and may repeat across selections; index -1 (padding) is skipped.
    Selections whose indices ascend (every selection the collectives make
    does) are merged linearly, one after another (kernels.coalesce): on the
    device without leaving it, one count read back per call. Ascent is
    checked on the host; on the device it is trusted, and checked only in
    debug mode (kernels.set_checks), since the check is a read-back.
    """
    device = xp is not np
    if device and not checks() or all(_ascending(s[0]) for s in sels):
        return kernels_coalesce(sels)
    cat = xp.concatenate([s[0] for s in sels])
    union, inv = xp.unique(cat, return_inverse=True)
    inv = inv.reshape(-1).astype(xp.int32)
    sums = xp.zeros(union.size, sels[0][1].dtype)
    pos = 0
    for idx, val in sels:
        scatter_add(sums, inv[pos:pos + idx.size], val)
        pos += idx.size
    if union.size and int(union[0]) == -1:
        union, sums = union[1:], sums[1:]
    return union, sums


def _ascending(idx):
    return idx.size < 2 or bool((idx[1:] > idx[:-1]).all())


def cut(idx, val, k, xp):
    """Top-k of a coalesced selection: (kept idx, kept val, dropped idx, dropped val)."""
    if idx.size <= k:
        return idx, val, idx[:0], val[:0]
    pos, kept = topk_abs(val, k)
    if xp is np:
        drop = np.ones(idx.size, bool)
        drop[pos] = False
    else:                       # a boolean mask would read its count back
        drop = complement(pos, idx.size, xp)
    return idx[pos], kept, idx[drop], val[drop]


def complement(pos, n, xp):
    """The positions of [0, n) not in `pos` (unique), ascending, without a
    read-back: each one goes to its rank among them, the kept ones to one
    spare slot at the end that is cut off."""
    m = n - pos.size
    kept = xp.zeros(n, bool)
    kept[pos] = True
    rank = xp.cumsum(~kept) - 1
    out = xp.empty(m + 1, xp.int64)
    out[xp.where(kept, m, rank)] = xp.arange(n)
    return out[:m]


def bsag(block, h, k_b, *, channel, touched=None):
    """B-SAG over the group `channel`.

    block: this member's team-reduced block (c entries); its top-h leave it
    (zeroed in place: what stays is this rank's residual of the block).
    Returns (idx, val, U): the merged selection (<= k_b entries, identical on
    every member) and U, the union size before the cut (h adapts to it).
    `touched`, if a list, gets (idx, old) for the entries of `block` that
    changed, old = their values before.
    """
    xp = array_module(block)
    idx, val = topk_abs(block, h)
    block[idx] = 0
    if touched is not None:
        touched.append((idx, val))
    msgs = bruck_allgather(pack(idx, val), channel=channel, tag=TAG_SAG)
    sels = [unpack(msgs[t], h, block.dtype) for t in range(channel.size)]
    union, sums = coalesce(sels, xp)
    kidx, kval, _, _ = cut(union, sums, k_b, xp)
    return kidx, kval, int(union.size)


def next_h(h, U, k_b, d):
    """B-SAG's adaptive h: shrink by 0.8 when the union overflows k_b, grow
    by 1.25 when it falls short; h stays within [max(1, k_b // d), k_b]."""
    h_min = max(1, k_b // d)
    if U > k_b:
        return max(h_min, (4 * h) // 5)          # floor(0.8 h)
    if U < k_b:
        return min(k_b, (5 * h + 3) // 4)        # ceil(1.25 h)
    return h


def rsag(block, k_b, *, channel, log=None, touched=None):
    """R-SAG over the group `channel` (its size a power of two).

    block: as for bsag; its top-k_b leave it, and each step adds this rank's
    share (1 / 2^(s+1)) of the entries dropped by the cut back into it.
    Returns (idx, val): the merged selection, exactly k_b entries. `log`, if
    a list, gets the number of entries of every message sent; `touched`
    (idx, old) for every change of `block`, in order (old: the values before).
    """
    xp = array_module(block)
    d, t = channel.size, channel.rank
    if d & (d - 1):
        raise ValueError(f"R-SAG needs a power-of-two group size, got {d}")
    idx, val = topk_abs(block, k_b)
    block[idx] = 0
    if touched is not None:
        touched.append((idx, val))
    s = 0
    while (1 << s) < d:
        partner = t ^ (1 << s)
        msg = pack(idx, val)
        buf = xp.empty(msg.size, xp.uint8)
        channel.Sendrecv(msg, partner, buf, partner, sendtag=TAG_SAG, recvtag=TAG_SAG)
        if log is not None:
            log.append(msg.nbytes // (4 + block.dtype.itemsize))
        other = unpack(buf, idx.size, block.dtype)
        # the lower team's selection first: both partners add in the same order
        pair = [(idx, val), other] if t < partner else [other, (idx, val)]
        union, sums = coalesce(pair, xp)
        idx, val, didx, dval = cut(union, sums, k_b, xp)
        if didx.size:
            if touched is not None:
                touched.append((didx, block[didx]))
            scatter_add(block, didx, dval / dval.dtype.type(1 << (s + 1)))
        s += 1
    return idx, val


def pad_selection(idx, val, k, xp):
    """(idx, val) padded to k entries with index -1 and value 0."""
    if idx.size == k:
        return idx.astype(xp.int32, copy=False), val
    pidx = xp.full(k, -1, xp.int32)
    pval = xp.zeros(k, val.dtype)
    pidx[:idx.size] = idx
    pval[:idx.size] = val
    return pidx, pval


def block_allgather(idx, val, k_b, *, channel):
    """All-gather each rank's final block selection (<= k_b entries) over the
    team `channel`; returns (idx, val) of shape (P', k_b) each, row q = team
    rank q's block, padded with index -1."""
    xp = array_module(val)
    if idx.size > k_b:
        raise ValueError(f"a final block holds {idx.size} > k_b = {k_b} entries")
    msgs = bruck_allgather(pack(*pad_selection(idx, val, k_b, xp)), channel=channel, tag=TAG_AG)
    P = channel.size
    out_idx = xp.empty((P, k_b), xp.int32)
    out_val = xp.empty((P, k_b), val.dtype)
    for q in range(P):
        out_idx[q], out_val[q] = unpack(msgs[q], k_b, val.dtype)
    return out_idx, out_val
