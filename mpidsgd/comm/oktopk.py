"""Ok-Topk sparse allreduce with error feedback (Li & Hoefler, "Near-Optimal
Sparse Allreduce for Distributed Deep Learning", PPoPP 2022).

    ok = OkTopk(n, np.float32, 0.01, channel=ch)
    ok.allreduce(g, out)      # out <- sparse mean over all ranks; ok.E updated

One step on A = g + E, k = costmodel.select_count(n, density), step counter t:
1. local threshold: every `threshold_every` steps the exact k-th largest |A|;
   in between the previous one, raised by 1.03 while more than 4k/3 entries
   pass it (at most 5 times). Selected: |A| >= threshold (|A| > 0 if it is 0).
   Then nudged for the next step: fewer than 2k/3 selected -> / 1.012, more
   than 5k/4 -> * 1.012.
2. regions: every `region_every` steps each rank picks the selected indices
   at positions i * floor(count / P), i = 1..P-1 (the even split i*n//P if it
   selected fewer than P), one allreduce sums them, / P gives the boundaries;
   rank r owns region r.
3. split and reduce: the selection in region j goes to rank j as one message
   of (region-local int32 index, value), in rotated order (partner r+i sends
   while r-i is received), at most `throttle` partners in flight; the batches
   are summed into the region in rank order 0..P-1, whatever their arrival.
4. global selection: every `threshold_every` steps all reduced entries are
   all-gathered and the global threshold is the exact k-th largest |sum| of
   them; in between each rank keeps the reduced entries at or above the
   reused global threshold and only those are all-gathered (Allgatherv).
   Kept: |sum| >= global threshold. Nudged: fewer than 2k/3 kept -> / 1.008,
   more than 4k/3 -> * 1.008.
5. residual: E = A, zeroed only where an index was selected locally AND kept
   globally; so sum_r E_new + P * out = sum_r (g + E_old).
6. out = kept sums / P, identical on every rank.

Thresholds are kept as values of the data type (float32 thresholds for
float32 data), computed in float64 and rounded. Traffic per step and rank:
costmodel.oktopk_phases on the step's actual sizes (`last`).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .. import kernels as K
from .channel import Counters
from .costmodel import select_count

TAG_SPLIT = 0x6b01


def check_oktopk(density, threshold_every, region_every, throttle):
    """None if the options are valid, else the problem as 'key: reason'."""
    if not 0 < density <= 1:
        return f"density: must be in (0, 1], got {density}"
    if threshold_every < 1:
        return f"threshold_every: must be >= 1, got {threshold_every}"
    if region_every < 1:
        return f"region_every: must be >= 1, got {region_every}"
    if throttle < 1:
        return f"throttle: must be >= 1, got {throttle}"
    return None


def cast(dtype, x):
    """x rounded to the data type, back as a Python float."""
    return float(np.dtype(dtype).type(x))


def above(absA, thr):
    """Mask of the selection rule: |A| >= thr, and |A| > 0 when thr is 0."""
    return absA >= thr if thr > 0 else absA > 0


def kth_largest(absv, k, xp):
    """k-th largest of absv (0 when it has fewer than k entries)."""
    if absv.size < k:
        return 0.0
    return float(xp.partition(absv, absv.size - k)[absv.size - k])


def local_threshold(absA, k, thr, exact, dtype, xp):
    """Step 1 before selecting: exact, or the reused one raised while too many pass."""
    if exact:
        return cast(dtype, kth_largest(absA, k, xp))
    for _ in range(5):
        if 3 * int(xp.count_nonzero(above(absA, thr))) <= 4 * k:
            break
        thr = cast(dtype, thr * 1.03)
    return thr


def nudge(thr, count, k, low, high, up, down, dtype):
    """The authors' adaptation: count < low*k -> thr / down, > high*k -> thr * up."""
    if count < low * k:
        return cast(dtype, thr / down)
    if count > high * k:
        return cast(dtype, thr * up)
    return thr


def region_points(sel, n, p):
    """This rank's P-1 boundary candidates (int64): selected indices at
    positions i * floor(count / P), or the even split i*n//P."""
    c = int(sel.size)
    if c < p:
        return np.array([i * n // p for i in range(1, p)], np.int64)
    pos = [i * (c // p) for i in range(1, p)]
    return np.array([int(sel[i]) for i in pos], np.int64)


class OkTopk:
    """Ok-Topk state on one rank: residual E, local and global thresholds,
    region boundaries, step counter t. Works on NumPy (or CuPy) arrays of
    float32/float64; the boundaries live on the host."""

    name = "oktopk"

    def __init__(self, n, dtype, density, *, channel, threshold_every=32, region_every=64,
                 throttle=4, xp=None):
        problem = check_oktopk(density, threshold_every, region_every, throttle)
        if problem:
            raise ValueError(problem)
        self.n, self.dtype = int(n), np.dtype(dtype)
        if self.n >= 2**31:
            raise ValueError("oktopk: n must be < 2**31 (int32 indices)")
        self.density = float(density)
        self.k = select_count(self.n, self.density)
        self.threshold_every, self.region_every = int(threshold_every), int(region_every)
        self.throttle = int(throttle)
        self.channel, self.P, self.r = channel, channel.size, channel.rank
        self.xp = xp or channel.backend.xp
        self.E = self.xp.zeros(self.n, self.dtype)
        self.reset()
        self.last = {}

    @classmethod
    def from_options(cls, n, dtype, opts, *, channel, xp=None):
        """Built from the [algo] options (density, threshold_every, region_every, throttle)."""
        return cls(n, dtype, opts.density, channel=channel, threshold_every=opts.threshold_every,
                   region_every=opts.region_every, throttle=opts.throttle, xp=xp)

    def reset(self):
        """Fresh state: zero residual, t = 0 (next step exact and rebalancing)."""
        self.E.fill(0)
        self.t = 0
        self.local_thr = 0.0
        self.global_thr = 0.0
        self.bounds = np.array([i * self.n // self.P for i in range(self.P + 1)], np.int64)

    def residual(self):
        """This rank's residual: a view, updated in place by every allreduce."""
        return self.E

    # -- checkpoint ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Per-rank state under its checkpoint names."""
        return {"residual": self.E, "oktopk_t": np.array([self.t], np.int64),
                "oktopk_thresholds": np.array([self.local_thr, self.global_thr], np.float64),
                "oktopk_bounds": self.bounds.copy()}

    def load_state_dict(self, st):
        bounds = np.asarray(st["oktopk_bounds"], np.int64).ravel()
        if bounds.size != self.P + 1:
            raise ValueError(f"oktopk: {bounds.size - 1} regions saved, {self.P} ranks now")
        self.E[...] = self.xp.asarray(st["residual"])
        self.t = int(np.asarray(st["oktopk_t"]).ravel()[0])
        self.local_thr, self.global_thr = (
            float(x) for x in np.asarray(st["oktopk_thresholds"]).ravel())
        self.bounds = bounds

    def summary(self) -> dict:
        """Fields for summary.json."""
        return {"density": self.density, "k": self.k, "threshold_every": self.threshold_every,
                "region_every": self.region_every, "throttle": self.throttle,
                "local_threshold": self.local_thr, "global_threshold": self.global_thr}

    # -- the allreduce ---------------------------------------------------------------
    def allreduce(self, g, out=None):
        """out <- Ok-Topk mean over all ranks of g (+ residual); state updated.

        g: n values of this object's dtype; out may be g itself. Collective
        over the channel. Returns out."""
        if g.shape != (self.n,) or g.dtype != self.dtype:
            raise ValueError(f"g must have shape ({self.n},) and dtype {self.dtype}")
        xp, P = self.xp, self.P
        exact = self.t % self.threshold_every == 0
        rebalance = self.t % self.region_every == 0
        counted = {}
        E = self.E
        E += g                                       # E is A = g + E_old from here on
        # 1. local selection
        thr, sel = self._select_local(E, exact)
        # 2. regions
        with self._count(counted, "regions"):
            if rebalance and P > 1:
                pts = region_points(sel, self.n, P)
                self.channel.Allreduce(pts)
                self.bounds = np.concatenate(([0], pts // P, [self.n])).astype(np.int64)
        # 3. split and reduce
        with self._count(counted, "split"):
            ridx, rsum, sent = self._split_reduce(E, sel)
        # 4. global selection
        gidx, gval, sizes = self._select_global(ridx, rsum, exact, counted)
        # 5. residual: zero where selected locally and kept globally
        if sel.size and gidx.size:
            pos = xp.minimum(xp.searchsorted(gidx, sel), gidx.size - 1)
            E[sel[gidx[pos] == sel]] = 0
        # 6. output
        if out is None:
            out = xp.empty(self.n, self.dtype)
        out.fill(0)
        out[gidx] = gval / P if P > 1 else gval
        self.last = dict(exact=exact, rebalance=rebalance, local_thr=thr, selected=int(sel.size),
                         sent=sent, gathered=sizes, kept=int(gidx.size), counted=counted,
                         support=gidx)
        self.t += 1
        return out

    def _select_local(self, A, exact):
        """Step 1: (threshold used, ascending selected indices); the
        threshold is nudged for the next step."""
        xp, k = self.xp, self.k
        absA = xp.abs(A)
        thr = local_threshold(absA, k, self.local_thr, exact, self.dtype, xp)
        sel = xp.flatnonzero(above(absA, thr))
        self.local_thr = nudge(thr, int(sel.size), k, 2 / 3, 5 / 4, 1.012, 1.012, self.dtype)
        return thr, sel

    def _select_global(self, ridx, rsum, exact, counted):
        """Step 4: (ascending global indices kept, their sums, entries each
        rank contributed to the Allgatherv); the global threshold is set
        (exact step) and nudged."""
        xp, k = self.xp, self.k
        if exact or not ridx.size:
            keep = ridx                              # exact: every reduced entry
        else:
            keep = ridx[xp.abs(rsum[ridx]) >= self.global_thr]
        with self._count(counted, "gather"):
            gidx, gval, sizes = self._gather((keep + int(self.bounds[self.r])).astype(np.int32),
                                             rsum[keep])
        if exact:
            self.global_thr = cast(self.dtype, kth_largest(xp.abs(gval), k, xp))
            mask = xp.abs(gval) >= self.global_thr
            gidx, gval = gidx[mask], gval[mask]
        self.global_thr = nudge(self.global_thr, int(gidx.size), k, 2 / 3, 4 / 3, 1.008, 1.008,
                                self.dtype)
        return gidx, gval, sizes

    @contextmanager
    def _count(self, counted, phase):
        """(bytes, messages) the Channel books during one phase, counted on
        fresh counters (exact: no rounding against a running total), then
        added to the channel's own."""
        ch = self.channel
        own, ch.counters = ch.counters, Counters()
        try:
            yield
        finally:
            fresh, ch.counters = ch.counters, own
            counted[phase] = (fresh.bytes.get(ch.label, 0.0), fresh.messages.get(ch.label, 0))
            own.add(ch.label, *counted[phase])
            own.emulated_s += fresh.emulated_s

    def _split_reduce(self, A, sel):
        """Send each region's selection to its owner; sum what this rank's
        region receives in rank order. Returns (region-local indices of the
        received union, ascending; the region's sums; entries sent to others)."""
        xp, P, r, b = self.xp, self.P, self.r, self.bounds
        cuts = np.searchsorted(xp.asnumpy(sel) if xp is not np else sel, b).tolist()
        out = []
        for j in range(P):
            part = sel[cuts[j]:cuts[j + 1]]
            out.append(((part - int(b[j])).astype(np.int32), A[part]))
        batches = [None] * P
        batches[r] = out[r]
        for start in range(1, P, self.throttle):
            window = range(start, min(P, start + self.throttle))
            reqs = [self.channel.Isend(K.pack(*out[(r + i) % P]), (r + i) % P, tag=TAG_SPLIT)
                    for i in window]
            for i in window:
                src = (r - i) % P
                batches[src] = self._recv(src)
            for q in reqs:
                q.Wait()
        rlen = int(b[r + 1] - b[r])
        rsum = xp.zeros(rlen, self.dtype)
        member = xp.zeros(rlen, bool)
        for idx, val in batches:                      # fixed rank order
            rsum[idx] += val                          # indices unique within a batch
            member[idx] = True
        sent = sum(int(out[j][0].size) for j in range(P) if j != r)
        return xp.flatnonzero(member), rsum, sent

    def _recv(self, src):
        from mpi4py import MPI
        st = MPI.Status()
        msg = self.channel.Mprobe(src, TAG_SPLIT, st)
        nbytes = st.Get_count(MPI.BYTE)
        buf = self.xp.empty(nbytes, np.uint8)
        self.channel.Mrecv(msg, buf)
        return K.unpack(buf, nbytes // (4 + self.dtype.itemsize), self.dtype)

    def _gather(self, idx, val):
        """All-gather every rank's (global index, value) entries, rank order
        (= ascending index: regions are ordered). Returns (idx, val, sizes)."""
        xp, P = self.xp, self.P
        cnt = np.array([idx.size], np.int64)
        sizes = np.empty((P, 1), np.int64)
        self.channel.Allgather(cnt, sizes)
        sizes = sizes.ravel().tolist()
        e = 4 + self.dtype.itemsize
        recv = xp.empty(sum(sizes) * e, np.uint8)
        self.channel.Allgatherv(K.pack(idx, val), recv, [s * e for s in sizes])
        parts, off = [], 0
        for s in sizes:
            parts.append(K.unpack(recv[off:off + s * e], s, self.dtype))
            off += s * e
        gidx = xp.concatenate([i for i, _ in parts]).astype(np.int64)
        gval = xp.concatenate([v for _, v in parts])
        return gidx, gval, sizes
