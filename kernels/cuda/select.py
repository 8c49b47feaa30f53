"""Numba CUDA selection by magnitude: topk_abs, threshold_select, ef_select.

Keys are the float bits with the sign cleared (ordered like |x|), read through
an unsigned view of the data. Top-k in two phases:

1. radix select, most significant 11-bit digit first: each pass histograms the
   digit of the keys that share the prefix chosen so far (shared-memory
   histogram per block, merged with atomics), the host walks the 2048 bins
   down to the bin holding the k-th key. It stops when every key of that bin
   is selected. Result: keys >= above_lo are in, keys in [bnd_lo, above_lo)
   (the boundary; one value when fully resolved) are in for the first `need`
   of them by index. The first pass also flags NaN/Inf; ef_select's first
   pass computes residual = grad + residual on the way.
2. stable compaction in tiles: count per tile, exclusive scan over tiles,
   then each tile writes its selected (index, bits) at
       pos(i) = #above before i + min(#boundary before i, need),
   so indices come out ascending and ties go to the lower index. ef_select
   zeroes the selected residual entries in the same kernel.
threshold_select is phase 2 alone with above_lo = bnd_lo = key(t).
"""
import numpy as np
from numba import cuda, int32, int64

from .util import THREADS, Device, blocks
from ..common import UINT, abs_mask, index_dtype, inf_key, non_finite_error

DIGIT = 11
NBINS = 1 << DIGIT
ITEMS = 8                        # consecutive elements per thread in a tile
TILE = THREADS * ITEMS


# ---------------------------------------------------------------- kernels

@cuda.jit(cache=True)
def _hist(u, amask, shift, pshift, prefix, dmask, inf, hist, flag):
    # hist[d] += #{i : key_i >> pshift == prefix and (key_i >> shift) & dmask == d}
    # (dmask = 2^digit - 1: the last digit is narrower than DIGIT bits, and
    # the prefix's low bits must not leak into its bin number)
    sh = cuda.shared.array(NBINS, int32)
    t = cuda.threadIdx.x
    for b in range(t, NBINS, cuda.blockDim.x):
        sh[b] = 0
    cuda.syncthreads()
    for i in range(cuda.grid(1), u.size, cuda.gridsize(1)):
        kk = u[i] & amask
        if kk >= inf:
            flag[0] = 1
        if (kk >> pshift) == prefix:
            cuda.atomic.add(sh, (kk >> shift) & dmask, 1)
    cuda.syncthreads()
    for b in range(t, NBINS, cuda.blockDim.x):
        if sh[b] != 0:
            cuda.atomic.add(hist, b, sh[b])


@cuda.jit(cache=True)
def _ef_hist(g, r, ru, amask, shift, inf, hist, flag):
    # residual = grad + residual, then the top-digit histogram of the new keys
    sh = cuda.shared.array(NBINS, int32)
    t = cuda.threadIdx.x
    for b in range(t, NBINS, cuda.blockDim.x):
        sh[b] = 0
    cuda.syncthreads()
    for i in range(cuda.grid(1), r.size, cuda.gridsize(1)):
        r[i] = g[i] + r[i]
        kk = ru[i] & amask
        if kk >= inf:
            flag[0] = 1
        cuda.atomic.add(sh, (kk >> shift) & (NBINS - 1), 1)
    cuda.syncthreads()
    for b in range(t, NBINS, cuda.blockDim.x):
        if sh[b] != 0:
            cuda.atomic.add(hist, b, sh[b])


@cuda.jit(device=True)
def _classify(kk, above_lo, bnd_lo):
    # (is above, is boundary)
    return kk >= above_lo, kk < above_lo and kk >= bnd_lo


@cuda.jit(cache=True)
def _tile_counts(u, amask, above_lo, bnd_lo, inf, acnt, bcnt, flag):
    # per tile (acnt, bcnt zeroed): #keys >= above_lo, #keys in [bnd_lo, above_lo)
    base = cuda.blockIdx.x * TILE + cuda.threadIdx.x * ITEMS
    ca = 0
    cb = 0
    for i in range(base, min(base + ITEMS, u.size)):
        kk = u[i] & amask
        if kk >= inf:
            flag[0] = 1
        a, b = _classify(kk, above_lo, bnd_lo)
        ca += a
        cb += b
    if ca:
        cuda.atomic.add(acnt, cuda.blockIdx.x, ca)
    if cb:
        cuda.atomic.add(bcnt, cuda.blockIdx.x, cb)


@cuda.jit(device=True)
def _block_scan(sha, a, shb, b):
    # inclusive prefix sums of a and of b over the block (Hillis-Steele in
    # shared memory, both at once: half the barriers)
    t = cuda.threadIdx.x
    sha[t] = a
    shb[t] = b
    cuda.syncthreads()
    d = 1
    while d < cuda.blockDim.x:
        wa = sha[t - d] if t >= d else 0
        wb = shb[t - d] if t >= d else 0
        cuda.syncthreads()
        sha[t] += wa
        shb[t] += wb
        cuda.syncthreads()
        d *= 2
    return sha[t], shb[t]


@cuda.jit(cache=True)
def _scan(cnt, off):
    # one block: off[i] = sum(cnt[:i]) for i <= cnt.size (off[-1] = total)
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    t = cuda.threadIdx.x
    m = cnt.size
    seg = (m + THREADS - 1) // THREADS
    lo = min(m, t * seg)
    hi = min(m, lo + seg)
    s = 0
    for i in range(lo, hi):
        s += cnt[i]
    run = _block_scan(sha, s, shb, 0)[0] - s
    for i in range(lo, hi):
        off[i] = run
        run += cnt[i]
    if t == THREADS - 1:
        off[m] = run


@cuda.jit(cache=True)
def _tile_write(u, amask, above_lo, bnd_lo, need, aoff, boff, out_idx, out_u, zero):
    # write this tile's selected (index, bits) at their final, ordered places
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    t = cuda.threadIdx.x
    base = cuda.blockIdx.x * TILE + t * ITEMS
    hi = min(base + ITEMS, u.size)
    ca = 0
    cb = 0
    for i in range(base, hi):
        a, b = _classify(u[i] & amask, above_lo, bnd_lo)
        ca += a
        cb += b
    sa, sb = _block_scan(sha, ca, shb, cb)
    A = aoff[cuda.blockIdx.x] + sa - ca     # above before my items
    B = boff[cuda.blockIdx.x] + sb - cb     # boundary before them
    for i in range(base, hi):
        bits = u[i]
        a, b = _classify(bits & amask, above_lo, bnd_lo)
        if a or (b and B < need):
            pos = A + min(B, need)
            out_idx[pos] = i
            out_u[pos] = bits
            if zero:
                u[i] = 0
        A += a
        B += b


# ---------------------------------------------------------------- host side

def _keys_view(d, dtype):
    return d.view(UINT[np.dtype(dtype)])


def _radix_bound(dev, u, dtype, k, flag, hist0=None):
    """(above_lo, bnd_lo, need) for the k-th largest key of u (k >= 1).
    hist0: the top-digit histogram when the caller already made it."""
    ut = np.uint64
    nbits = 8 * dtype.itemsize - 1
    amask, inf = ut(abs_mask(dtype)), ut(inf_key(dtype))
    prefix, shift, above = 0, nbits, 0
    while shift > 0:
        d = min(DIGIT, shift)
        shift -= d
        if hist0 is not None:
            h, hist0 = hist0, None
        else:
            hd = dev.zeros(NBINS, np.int64)
            _hist[blocks(u.size), THREADS, dev.stream](
                u, amask, ut(shift), ut(shift + d), ut(prefix), ut((1 << d) - 1), inf, hd, flag)
            h = dev.host(hd)
        b = (1 << d) - 1                    # walk down to the bin of the k-th
        while above + h[b] < k:
            above += int(h[b])
            b -= 1
        prefix = (prefix << d) | b
        if above + h[b] == k:               # the whole bin is in: done
            break
    return (prefix + 1) << shift, prefix << shift, k - above


def _compact(dev, u, dtype, above_lo, bnd_lo, need, count, zero=False):
    """(idx, vals) of the selected keys, in index order (see module doc)."""
    n = u.size
    ut = np.uint64
    amask, inf = ut(abs_mask(dtype)), ut(inf_key(dtype))
    nt = -(-n // TILE)
    flag = dev.zeros(1, np.int32)
    acnt, bcnt = dev.zeros(nt, np.int64), dev.zeros(nt, np.int64)
    aoff, boff = dev.empty(nt + 1, np.int64), dev.empty(nt + 1, np.int64)
    _tile_counts[nt, THREADS, dev.stream](u, amask, ut(above_lo), ut(bnd_lo), inf,
                                          acnt, bcnt, flag)
    _scan[1, THREADS, dev.stream](acnt, aoff)
    _scan[1, THREADS, dev.stream](bcnt, boff)
    if count is None:                       # threshold: the count is data
        if dev.host(flag)[0]:
            raise non_finite_error("input")
        count = int(dev.host(aoff[nt:])[0])
    idx = dev.empty(count, index_dtype(n))
    vals = dev.empty(count, dtype)
    if count:
        _tile_write[nt, THREADS, dev.stream](u, amask, ut(above_lo), ut(bnd_lo), need,
                                             aoff, boff, idx, _keys_view(vals, dtype), zero)
    return idx, vals


def _empty_result(dev, n, dtype):
    return dev.result(dev.empty(0, index_dtype(n))), dev.result(dev.empty(0, dtype))


def topk_abs(x, k):
    dev = Device(x)
    dtype = np.dtype(x.dtype)
    if x.size == 0:
        return _empty_result(dev, 0, dtype)
    u = _keys_view(dev.put(x), dtype)
    flag = dev.zeros(1, np.int32)
    if k == 0:                              # one histogram pass: the NaN check
        _radix_bound(dev, u, dtype, 1, flag)
        if dev.host(flag)[0]:
            raise non_finite_error("input")
        return _empty_result(dev, x.size, dtype)
    above_lo, bnd_lo, need = _radix_bound(dev, u, dtype, k, flag)
    if dev.host(flag)[0]:
        raise non_finite_error("input")
    idx, vals = _compact(dev, u, dtype, above_lo, bnd_lo, need, k)
    return dev.result(idx), dev.result(vals)


def threshold_select(x, tkey):
    dev = Device(x)
    dtype = np.dtype(x.dtype)
    if x.size == 0:
        return _empty_result(dev, 0, dtype) + (0,)
    u = _keys_view(dev.put(x), dtype)
    idx, vals = _compact(dev, u, dtype, int(tkey), int(tkey), 0, None)
    return dev.result(idx), dev.result(vals), int(idx.size)


def ef_select(grad, residual, k, zero=True):
    dev = Device(grad, residual)
    dtype = np.dtype(residual.dtype)
    n = residual.size
    if n == 0:
        return _empty_result(dev, 0, dtype)
    g, r = dev.put(grad), dev.put(residual)
    ru = _keys_view(r, dtype)
    ut = np.uint64
    nbits = 8 * dtype.itemsize - 1
    flag = dev.zeros(1, np.int32)
    hd = dev.zeros(NBINS, np.int64)
    _ef_hist[blocks(n), THREADS, dev.stream](g, r, ru, ut(abs_mask(dtype)), ut(nbits - DIGIT),
                                            ut(inf_key(dtype)), hd, flag)
    h = dev.host(hd)
    if dev.host(flag)[0]:
        dev.write_back(r, residual)
        raise non_finite_error("grad + residual")
    if k == 0:
        dev.write_back(r, residual)
        return _empty_result(dev, n, dtype)
    above_lo, bnd_lo, need = _radix_bound(dev, ru, dtype, k, flag, hist0=h)
    idx, vals = _compact(dev, ru, dtype, above_lo, bnd_lo, need, k, zero=zero)
    dev.write_back(r, residual)
    return dev.result(idx), dev.result(vals)
