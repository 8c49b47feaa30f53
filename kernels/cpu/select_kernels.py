"""Numba CPU kernels for selection by magnitude (driven by select.py).

Order key: key(x) = bits(x) & ~signbit, an unsigned integer ordered like |x|
(+0 and -0 share key 0; keys >= bits(Inf) are Inf or NaN).

- collect: ONE parallel pass over contiguous chunks. Per block of BLOCK
  elements a branch-free, vectorised loop writes byte flags key >= lb and
  tracks the largest key (the NaN/Inf check); a scan of the flags, a 64-bit
  word (eight flags) at a time, appends (index, raw bits) of the rare
  candidates to the chunk's buffer. The error-feedback variant fuses
  x += g (written back) into the same loop and zeroes the recorded
  candidates while their block is in L1 (restore_unselected puts back the
  few that are not selected).
- kth_largest: MSD radix select (11-bit digits) among the candidates.
- emit: candidates in index order, keys > T plus the first ties == T.
- top_histogram: exact counts of the top 11 key bits (the fallback bound).
"""
import sys

import numpy as np
from numba import njit, prange

from .bits import abs_key, bits_float, cttz, float_bits, zero_key

BLOCK = 512       # elements per flag block: values + flags stay in L1
DIGIT = 11        # radix digit: 2048 bins
LITTLE = sys.byteorder == "little"  # byte j of a flag word is bits 8j..8j+7


# ---------------------------------------------------------------- pass kernels

@njit(cache=True)
def _flag_block(w, lb, f, mk):
    # f[j] = key(w[j]) >= lb; returns max(mk, max key). No branches: vectorises.
    for j in range(w.size):
        kk = abs_key(w[j])
        mk = max(mk, kk)
        f[j] = kk >= lb
    return mk


@njit(cache=True)
def _acc_flag_block(gw, w, lb, f, mk):
    # fused error feedback: w[j] += gw[j], then flag the new value
    for j in range(w.size):
        a = gw[j] + w[j]
        w[j] = a
        kk = abs_key(a)
        mk = max(mk, kk)
        f[j] = kk >= lb
    return mk


@njit(cache=True)
def _emit_flags(f, fw, w, base, m, ci, cr):
    # append (base + j, bits(w[j])) for every flagged j, in index order; keep
    # counting past the buffer's capacity so the caller sees the true count.
    # Eight flags per 64-bit word; a word is usually 0 (no branch into the body).
    cap = ci.size
    for q in range(fw.size):
        word = fw[q]
        if LITTLE:
            while word != 0:                # one iteration per set flag
                j = 8 * q + (cttz(word) >> 3)
                if m < cap:
                    ci[m] = base + j
                    cr[m] = float_bits(w[j])
                m += 1
                word &= word - np.uint64(1)
        elif word != 0:
            for j in range(8 * q, 8 * q + 8):
                if f[j]:
                    if m < cap:
                        ci[m] = base + j
                        cr[m] = float_bits(w[j])
                    m += 1
    return m


@njit(cache=True)
def _zero_flagged(w, f):
    # w[j] = 0 where flagged: a masked store, vectorised, while w is in L1
    for j in range(w.size):
        if f[j]:
            w[j] = 0


@njit(cache=True)
def _collect_chunk(xs, gs, off, lb, ci, cr, zero):
    # error-feedback mode (gs non-empty) with `zero` also zeroes the recorded candidates:
    # most of them are selected, and zeroing here, while the block is in L1,
    # is cheaper than k scattered stores later (see restore_unselected). Once
    # the buffer overflowed nothing more is zeroed (the caller restores all).
    f = np.zeros(BLOCK, np.uint8)
    fw = f.view(np.uint64)
    m = 0
    mk = zero_key(xs)
    ef = gs.size > 0
    for s in range(0, xs.size, BLOCK):
        w = xs[s:s + BLOCK]
        if w.size < BLOCK:                  # last, partial block
            f[:] = 0
        if ef:
            mk = _acc_flag_block(gs[s:s + BLOCK], w, lb, f, mk)
        else:
            mk = _flag_block(w, lb, f, mk)
        m = _emit_flags(f, fw, w, off + s, m, ci, cr)
        if ef and zero and m <= ci.size:
            _zero_flagged(w, f)
    return m, mk


@njit(parallel=True, cache=True)
def collect(x, g, lb, bounds, cap, cidx, craw, counts, maxk, zero):
    """Chunk c of x (bounds[c]:bounds[c+1]) appends its candidates key >= lb to
    cidx/craw[c*cap:(c+1)*cap]; counts[c] is its true count, maxk[c] its largest
    key. With g non-empty, x += g first (in place, same pass) and, if `zero`,
    the recorded candidates are set to 0 in x."""
    for c in prange(bounds.size - 1):
        lo, hi = bounds[c], bounds[c + 1]
        gs = g[lo:hi] if g.size else g
        m, mk = _collect_chunk(x[lo:hi], gs, lo, lb,
                               cidx[c * cap:(c + 1) * cap], craw[c * cap:(c + 1) * cap], zero)
        counts[c] = m
        maxk[c] = mk


@njit(parallel=True, cache=True)
def top_histogram(x, shift, bounds, hist):
    """hist[c, d] = #elements of chunk c whose key >> shift == d (4 interleaved
    sub-histograms so consecutive equal keys do not stall on one counter)."""
    nb = hist.shape[1]
    for c in prange(bounds.size - 1):
        sub = np.zeros((4, nb), np.int64)
        xs = x[bounds[c]:bounds[c + 1]]
        for i in range(xs.size):
            sub[i & 3, abs_key(xs[i]) >> shift] += 1
        for d in range(nb):
            hist[c, d] = sub[0, d] + sub[1, d] + sub[2, d] + sub[3, d]


@njit(cache=True)
def sample_keys(x, g, out):
    """out[j] = key of x (of x + g when g is non-empty) at a fixed stride."""
    m = out.size
    stride = x.size // m
    for j in range(m):
        i = j * stride + (stride >> 1)
        v = x[i] + g[i] if g.size else x[i]
        out[j] = abs_key(v)
    return out


# ---------------------------------------------------------------- exact select

@njit(cache=True)
def kth_largest(raw, k, hb):
    """(T, above): T is the k-th largest key of the bit patterns raw
    (1 <= k <= raw.size), above = #keys > T. All keys agree on the bits from
    hb up, so MSD radix select with DIGIT-bit digits starts at bit hb."""
    above = 0
    cur = raw
    shift = hb
    while shift > 0:
        d = min(DIGIT, shift)
        shift -= d
        dm = (1 << d) - 1
        # histogram of this digit (4 interleaved copies: no store-to-load stall)
        hist = np.zeros((4, dm + 1), np.int64)
        for i in range(cur.size):
            hist[i & 3, (abs_key(cur[i]) >> shift) & dm] += 1
        tot = hist.sum(axis=0)
        b = dm                              # walk down to the bin of the k-th
        while above + tot[b] < k:
            above += tot[b]
            b -= 1
        # keep that bin only
        nxt = np.empty(tot[b], cur.dtype)
        o = 0
        for i in range(cur.size):
            v = abs_key(cur[i])
            if ((v >> shift) & dm) == b:
                nxt[o] = v
                o += 1
        cur = nxt
    return abs_key(cur[0]), above


@njit(cache=True)
def emit(cidx, craw, T, need, out_idx, out_raw):
    """Walk the candidates (index order) until out_idx is full: take every key
    > T and the first `need` keys == T. Branch-free body: the take/skip
    pattern is random, so a branch would mispredict."""
    o = 0
    k = out_idx.size
    seen = 0                                # keys == T met so far
    for j in range(cidx.size):
        if o == k:
            break
        kk = abs_key(craw[j])
        eq = kk == T
        take = (kk > T) | (eq & (seen < need))
        seen += eq
        out_idx[o] = cidx[j]
        out_raw[o] = craw[j]
        o += take
    return o


@njit(cache=True)
def compact(cidx, craw, counts, cap):
    """Move chunk c's candidates (at c*cap) down to follow chunk c-1's: after
    this the C = counts.sum() candidates are cidx/craw[:C], in index order."""
    o = counts[0]
    for c in range(1, counts.size):
        for j in range(c * cap, c * cap + counts[c]):
            cidx[o] = cidx[j]
            craw[o] = craw[j]
            o += 1
    return o


@njit(cache=True)
def restore_unselected(x, cidx, craw, T, need):
    """Error feedback: put back the candidates that emit did not take (keys
    < T, ties past the first `need`); the taken ones stay zeroed."""
    seen = 0
    for j in range(cidx.size):
        kk = abs_key(craw[j])
        if kk == T:
            seen += 1
        if kk < T or (kk == T and seen > need):
            x[cidx[j]] = bits_float(craw[j])


@njit(cache=True)
def restore_all(x, cidx, craw, counts, cap):
    """Error feedback: put back every recorded candidate (before a fallback)."""
    for c in range(counts.size):
        for j in range(c * cap, c * cap + min(counts[c], cap)):
            x[cidx[j]] = bits_float(craw[j])


@njit(cache=True)
def zero_at(x, idx):
    """x[idx] = 0."""
    for i in range(idx.size):
        x[idx[i]] = 0
