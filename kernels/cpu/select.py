"""CPU selection by magnitude: plans the bound and runs the Numba kernels of
select_kernels.py. Shared by topk_abs, ef_select and threshold_select.

Top-k of n elements, keys key(x) = |x| as ordered bits, ties to lower index:
1. estimate: the keys of a strided sample of m elements, of which about
   mu = m k / n lie above the k-th largest key; the r-th largest sample key,
   r = mu + 4 sqrt(mu) + 2, is a lower bound lb that ~ k r / mu elements pass;
2. collect: one parallel pass appends every (index, bits) with key >= lb to a
   per-chunk buffer, and finds the largest key (NaN/Inf check);
3. exact select among the C ~ 1.2 k candidates: the k-th largest key T and
   the number above it (radix select, a fraction of a pass);
4. emit: keys > T and the first ties == T, in index order.
If C < k (bound too high) or a buffer overflowed (bound too low), an exact
bound comes from a histogram of the top 11 key bits and step 2 runs again:
about three more passes, only on inputs the sample misjudged.
"""
import math
import threading

import numba
import numpy as np

from . import select_kernels as K
from ..common import UINT, index_dtype, inf_key, non_finite_error

SAMPLE = 1 << 14  # sample size for the bound estimate
SMALL = 1 << 15   # below this many elements every element is a candidate
Z = 4.0           # safety margin of the estimate, in standard deviations

_local = threading.local()


def chunk_bounds(n, nchunks):
    """nchunks + 1 boundaries of contiguous chunks whose sizes are multiples of
    the flag block (one chunk per thread)."""
    step = -(-max(n, 1) // nchunks)
    step = -(-step // K.BLOCK) * K.BLOCK
    return np.minimum(np.arange(nchunks + 1, dtype=np.int64) * step, n)


def _buffers(size, idx_dtype, raw_dtype, reuse):
    """Candidate buffers. With `reuse` one pair per thread is kept and grown:
    fresh pages cost a page fault each on first touch, a sizeable part of a
    pass at 1% density. Large one-off buffers (fallback, threshold) are not kept."""
    if not reuse:
        return np.empty(size, idx_dtype), np.empty(size, raw_dtype)
    ws = _local.__dict__.setdefault("ws", {})
    key = (np.dtype(idx_dtype), np.dtype(raw_dtype))
    pair = ws.get(key)
    if pair is None or pair[0].size < size:
        pair = ws[key] = (np.empty(size, idx_dtype), np.empty(size, raw_dtype))
    return pair[0][:size], pair[1][:size]


def _collect(x, g, lb, cap, bounds, reuse=False, zero=True):
    """Candidates key >= lb per chunk (x += g first, and candidates zeroed
    if `zero`, when g is non-empty). Returns (cidx, craw, counts, hi): chunk c's
    candidates at [c*cap, c*cap + counts[c]) (true counts: a count > cap
    overflowed), hi = the largest key. Raises on NaN/Inf."""
    nch = bounds.size - 1
    u = UINT[x.dtype]
    cidx, craw = _buffers(nch * cap, index_dtype(x.size), u, reuse)
    counts = np.zeros(nch, np.int64)
    maxk = np.zeros(nch, u)
    K.collect(x, g, u.type(lb), bounds, cap, cidx, craw, counts, maxk, zero)
    hi = int(maxk.max()) if nch else 0
    if hi >= inf_key(x.dtype):
        raise non_finite_error("input")
    return cidx, craw, counts, hi


def _estimate(x, g, k):
    """(lb, cap): a key bound most likely at or below the k-th largest key, and
    a buffer size the candidates most likely fit in (None: no useful bound)."""
    n = x.size
    m = min(SAMPLE, n // 16)
    keys = np.empty(m, UINT[x.dtype])
    K.sample_keys(x, g, keys)
    mu = m * k / n                          # expected sample keys above the k-th
    r = int(math.ceil(mu + Z * math.sqrt(mu) + 2))
    if r > m:
        return 0, None
    lb, _ = K.kth_largest(keys, r, 8 * keys.itemsize - 1)
    return lb, int(1.5 * n * r / m) + 8 * K.BLOCK


def _fallback_bound(x, k, bounds):
    """Exact bound: the lowest key of the top-11-bit bin holding the k-th key."""
    shift = 8 * x.dtype.itemsize - 1 - K.DIGIT
    hist = np.zeros((bounds.size - 1, 1 << K.DIGIT), np.int64)
    K.top_histogram(x, shift, bounds, hist)
    above = np.cumsum(hist.sum(axis=0)[::-1])   # #keys in bins >= b, from the top
    b = (1 << K.DIGIT) - 1 - int(np.searchsorted(above, k))
    return b << shift


def select_topk(x, k, g=None, nchunks=None, zero=True):
    """(idx, vals): the k largest |x|, ties to the lower index, idx ascending.
    With g (error feedback): x += g first, fused into the first pass, and the
    selected entries of x are zeroed (unless `zero` is False). x and g
    contiguous, same dtype; 0 <= k <= x.size (checked by the caller)."""
    n = x.size
    bounds = chunk_bounds(n, nchunks or numba.get_num_threads())
    chunk = int(np.diff(bounds).max())
    ef = g is not None
    g = g if ef else np.empty(0, x.dtype)
    if k == 0:                              # nothing to keep: the check only
        lb, cap = inf_key(x.dtype), 0
    elif n < SMALL:                         # small: everything is a candidate
        lb, cap = 0, chunk
    else:
        lb, cap = _estimate(x, g, k)
    cap = chunk if cap is None else min(cap, chunk)
    cidx, craw, counts, hi = _collect(x, g, lb, cap, bounds, reuse=cap < chunk, zero=zero)
    idx = np.empty(k, index_dtype(n))
    vals = np.empty(k, x.dtype)
    if k == 0:
        return idx, vals
    zeroed = ef and zero                    # candidates of x are zeroed
    if counts.sum() < k or (counts > cap).any():
        # misjudged bound: undo the zeroing, exact bound, collect again
        if zeroed:
            K.restore_all(x, cidx, craw, counts, cap)
            zeroed = False
        lb, cap = _fallback_bound(x, k, bounds), chunk
        cidx, craw, counts, hi = _collect(x, g[:0], lb, cap, bounds)
    c = K.compact(cidx, craw, counts, cap)
    cidx, craw = cidx[:c], craw[:c]
    T, above = K.kth_largest(craw, k, (int(lb) ^ hi).bit_length())
    # T as the key type: a Python int reaches Numba as int64, and Numba
    # compares uint64 with int64 in float64, which merges keys that differ
    # only in their low bits (adjacent float64 values)
    T = craw.dtype.type(T)
    K.emit(cidx, craw, T, k - above, idx, vals.view(craw.dtype))
    if zeroed:
        K.restore_unselected(x, cidx, craw, T, k - above)
    elif ef and zero:
        K.zero_at(x, idx)
    return idx, vals


def select_threshold(x, tkey, nchunks=None):
    """(idx, vals, count) of every element with key >= tkey, idx ascending."""
    bounds = chunk_bounds(x.size, nchunks or numba.get_num_threads())
    chunk = int(np.diff(bounds).max())
    cidx, craw, counts, _ = _collect(x, x[:0], tkey, chunk, bounds)
    count = K.compact(cidx, craw, counts, chunk)
    idx = np.empty(count, cidx.dtype)
    vals = np.empty(count, x.dtype)
    # take every candidate: keys > 0, and up to `count` keys == 0
    K.emit(cidx[:count], craw[:count], craw.dtype.type(0), count, idx, vals.view(craw.dtype))
    return idx, vals, count
