"""Spar-Reduce-Scatter (SparDL): a sparse reduce-scatter for any number of ranks.

The (padded) gradient of every rank is viewed as P blocks of c; rank r owns
block r. In ceil(log2 P) rounds every rank forwards each non-own block exactly
once, after re-taking the top-k_b of its partially reduced values, so every
message holds exactly k_b entries per block however many sparse vectors have
been summed into it:

    R = ceil(log2 P); round i: gap_i = 2^(R-1-i),
        s_0 = P - 2^(R-1), s_i = 2^(R-1-i) for i >= 1
    for j < s_i: b = (r + gap_i + j) mod P; idx = topk_abs(A[b], k_b)
                 (the s_i blocks of a round in one batched selection,
                 kernels.topk_abs_blocks: one launch on the GPU)
                 send (idx, A[b][idx]); A[b][idx] = 0
    ONE packed message of s_i * k_b entries to (r + gap_i) mod P;
    receive s_i * k_b from (r - gap_i) mod P: its j-th block is block
    (r + j) mod P (a block this rank keeps): A[(r + j) mod P][idx] += val

A rank never receives a block after sending it. What stays in A[b] after the
block left (the unselected partial sums) is what SparDL's global residual
collection keeps on the final support; the caller does that. Since nothing
reads or changes a block after it left, the zeroing `A[b][idx] = 0` is not
stored here: A[b] keeps the values it was selected from, and the selection
is logged so that the caller zeroes it where it stays on the final support
(no scattered stores now, none to undo later).
"""
from __future__ import annotations

from ..backend import StagedMessage, array_module
from ..kernels import ef_select_blocks, scatter_add, topk_abs_blocks, unpack
from .costmodel import log2ceil

TAG_SRS = 0x5B2


def srs_schedule(p: int):
    """[(gap_i, s_i)] of the ceil(log2 p) rounds (empty for p = 1)."""
    R = log2ceil(p)
    return [(1 << (R - 1 - i), p - (1 << (R - 1)) if i == 0 else 1 << (R - 1 - i))
            for i in range(R)]


class LazySum:
    """A (P x c, padded) holds a residual E; block b becomes E_b + g_b on its
    first use, in place: fused into the selection (kernels.ef_select_blocks:
    one pass reads E_b and g_b, writes the sum and selects; a run of such
    blocks in one call) when the block is first selected, a plain add when
    it first receives. g holds the n
    unpadded values; the padding of A is left as it is."""

    def __init__(self, A, g):
        self.A, self.g, self.c = A, g, A.shape[1]
        self.todo = [True] * A.shape[0]

    def _width(self, b):
        return max(0, min(self.c, self.g.size - b * self.c))

    def ensure(self, b):
        """Block b holds E_b + g_b (added now if it did not)."""
        if self.todo[b]:
            self.todo[b] = False
            m = self._width(b)
            if m:
                lo = b * self.c
                xp = array_module(self.A)
                xp.add(self.A[b][:m], self.g[lo:lo + m], out=self.A[b][:m])

    def fusable(self, b):
        """Block b is still E_b and full width: its sum can be fused into ef_select."""
        return self.todo[b] and self._width(b) == self.c

    def take_run(self, b0, s, k):
        """Top-k of the s consecutive blocks b0.. (all fusable, or summed first
        if not); A keeps the values selected from. Returns (idx, val), (s, k)."""
        rows = self.A[b0:b0 + s].reshape(-1)
        if all(self.fusable(b) for b in range(b0, b0 + s)):
            for b in range(b0, b0 + s):
                self.todo[b] = False
            g = self.g[b0 * self.c:(b0 + s) * self.c]
            return ef_select_blocks(g, rows, s, k, zero=False)
        for b in range(b0, b0 + s):
            self.ensure(b)
        return topk_abs_blocks(rows, s, k)

    def finish(self):
        for b in range(len(self.todo)):
            self.ensure(b)


def _runs(bs, lazy):
    """Split the block list bs into runs (b0, s) of consecutive blocks that one
    batched selection can take (for a LazySum: all fusable or none)."""
    runs = []
    for b in bs:
        kind = lazy.fusable(b) if lazy is not None else None
        if runs and b == runs[-1][0] + runs[-1][1] and kind == runs[-1][2]:
            runs[-1][1] += 1
        else:
            runs.append([b, 1, kind])
    return [(b0, s) for b0, s, _ in runs]


def _take(A, bs, k_b, touched, lazy):
    """Top-k_b of the blocks bs, about to leave this rank, as (block, idx,
    val) in order: one batched launch per run of consecutive blocks, each
    run's selections given out before the next run is selected (so their
    copies to the host message overlap it). Logged with old = None: the
    selected entries are not zeroed in A, see the module docstring."""
    for b0, s in _runs(bs, lazy):
        if lazy is not None:
            idx, val = lazy.take_run(b0, s, k_b)
        else:
            idx, val = topk_abs_blocks(A[b0:b0 + s].reshape(-1), s, k_b)
        for j, (bi, bv) in enumerate(zip(idx, val)):
            if touched is not None:
                touched.append((b0 + j, bi, None))
            yield b0 + j, bi, bv


def _exchange(channel, xp, m, selected, dest, src, k_b, dtype):
    """Send the m selections of `selected` as one packed message
    (kernels/packing.py's layout: every index, then every value), receive
    as many blocks. Each selection is copied into the host message as soon
    as it is given (backend.StagedMessage): on the GPU that copy runs while
    the next run of blocks is selected, and MPI reads the pinned message
    directly."""
    s = dtype.itemsize
    msg = StagedMessage(channel.backend, m * k_b * (4 + s), slot="srs")
    for j, (b, idx, val) in enumerate(selected):
        if idx.size != k_b:
            raise ValueError(f"block {b}: a selection of {idx.size} entries, not k_b = {k_b}")
        msg.put(4 * j * k_b, idx.astype(xp.int32, copy=False))
        msg.put(4 * m * k_b + s * j * k_b, val)
    host = msg.finish()
    buf = xp.empty(host.size, xp.uint8)
    channel.Sendrecv(host, dest, buf, src, sendtag=TAG_SRS, recvtag=TAG_SRS)
    idx, val = unpack(buf, m * k_b, dtype)
    return [(idx[j * k_b:(j + 1) * k_b], val[j * k_b:(j + 1) * k_b]) for j in range(m)], m * k_b


def spar_reduce_scatter(A, k_b, *, channel, batched=True, log=None, touched=None, lazy=None):
    """Sparse reduce-scatter of the (P x c) array A over `channel`, in place.

    Afterwards A[r] (r = channel.rank) holds block r summed over every rank's
    forwarded selections plus this rank's own values; for b != r, A[b] holds
    block b as this rank had it when it forwarded top-k_b of it: what this
    rank kept of it is that with the forwarded entries zeroed (not stored,
    see the module docstring). `batched=False` sends one block per message
    (P - 1 messages; the reference form, same result). `log`, if a list,
    gets the number of entries of every message sent (read off the packed
    message); `touched`, if a list, gets, in order, (block, idx, old) for
    every change of A, old = the values at idx just before (restoring them
    in reverse order gives back A's values before the call), and
    (block, idx, None) for every forwarded selection (the zeroing not
    stored). `lazy`, a LazySum over A, means A holds a residual and each
    block gets its gradient added on first use (the result is that of
    A + g from the start, bit for bit).
    """
    xp = array_module(A)
    P, r = channel.size, channel.rank
    if A.shape[0] != P:
        raise ValueError(f"A has {A.shape[0]} blocks for {P} ranks")
    for gap, s in srs_schedule(P):
        dest, src = (r + gap) % P, (r - gap) % P
        groups = [range(s)] if batched else [[j] for j in range(s)]
        for js in groups:
            blocks = [(dest + j) % P for j in js]
            got, sent = _exchange(channel, xp, len(blocks), _take(A, blocks, k_b, touched, lazy),
                                  dest, src, k_b, A.dtype)
            if log is not None:
                log.append(sent)
            # the j-th received block is block (r + j) mod P, still kept here
            for j, (idx, val) in zip(js, got):
                b = (r + j) % P
                if lazy is not None:
                    lazy.ensure(b)
                if touched is not None:
                    touched.append((b, idx, A[b][idx]))
                scatter_add(A[b], idx, val)
    return A
