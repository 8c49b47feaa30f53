"""Single-block radix select: a whole segment's selection in one launch.

One CUDA block per segment of m keys (m up to about 2^16: the segment stays in
L1/L2 between the passes). Shared-memory histogram, one digit per pass over
the segment, the digit chosen by the block itself (select_device.py), then a
stable compaction: thread t owns the t-th contiguous run of the segment, a
block scan of the per-run counts gives each run its output offsets, so the
selected indices come out ascending and ties go to the lower index.

Modes: TOPK (k largest keys), THRESH (every key >= a given key; one segment;
the count goes to status[1]). With ef, the first pass writes r = g + r and
histograms the new keys (fused error feedback); selected entries of r are
zeroed in the compaction (zero=True) unless a NaN/Inf was met.
"""
from numba import cuda, int32, int64, uint64

from .select_device import ABOVE, ALO, BLO, DIGIT, DONE, NBINS, NEED, block_scan, choose_digit
from .select_device import classify, take
from .util import THREADS

TOPK, THRESH = 0, 1


@cuda.jit(device=True)
def _first_pass(g, r, u, base, m, ef, amask, inf, shift, use_hist, hist, status):
    # r = g + r (ef), NaN/Inf flag, and the top digit's histogram
    for i in range(cuda.threadIdx.x, m, cuda.blockDim.x):
        if ef:
            r[base + i] = g[base + i] + r[base + i]
        kk = u[base + i] & amask
        if kk >= inf:
            status[0] = 1
        if use_hist:
            cuda.atomic.add(hist, kk >> shift, 1)


@cuda.jit(device=True)
def _digit_pass(u, base, m, amask, shift, dmask, bnd, hist):
    # histogram of the digit at `shift` among the keys in the boundary
    blo = bnd[BLO]
    alo = bnd[ALO]
    for i in range(cuda.threadIdx.x, m, cuda.blockDim.x):
        kk = u[base + i] & amask
        if kk >= blo and kk < alo:
            cuda.atomic.add(hist, (kk >> shift) & dmask, 1)


@cuda.jit(device=True)
def _compact(u, base, m, amask, bnd, cnt, out_idx, out_u, obase, zero, sha, shb, status):
    # stable write of the selection; returns the number of keys above alo
    t = cuda.threadIdx.x
    per = (m + cuda.blockDim.x - 1) // cuda.blockDim.x
    lo = min(m, t * per)
    hi = min(m, lo + per)
    blo = bnd[BLO]
    alo = bnd[ALO]
    need = cnt[NEED]
    ca = int64(0)
    cb = int64(0)
    for i in range(lo, hi):
        a, b = classify(u[base + i] & amask, blo, alo)
        ca += a
        cb += b
    sa, sb = block_scan(sha, ca, shb, cb)
    above = sa - ca
    bseen = sb - cb
    for i in range(lo, hi):
        bits = u[base + i]
        a, b = classify(bits & amask, blo, alo)
        pos = take(a, b, above, bseen, need)
        if pos >= 0:
            out_idx[obase + pos] = i
            out_u[obase + pos] = bits
            if zero and status[0] == 0:
                u[base + i] = 0
        above += a
        bseen += b
    return sa


@cuda.jit(cache=True)
def small_select(g, r, u, m, ef, mode, k, tkey, nbits, amask, inf,
                 out_idx, out_u, zero, status):
    """Block b selects from keys u[b*m:(b+1)*m] (module docstring); TOPK
    writes its k results at out[b*k:(b+1)*k], indices local to the segment."""
    hist = cuda.shared.array(NBINS, int32)
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    bnd = cuda.shared.array(2, uint64)
    cnt = cuda.shared.array(3, int64)
    t = cuda.threadIdx.x
    base = cuda.blockIdx.x * m
    topk = mode == TOPK and k > 0
    # state: [0, 2^nbits) in doubt, or [tkey, tkey) for a threshold
    for b in range(t, NBINS, cuda.blockDim.x):
        hist[b] = 0
    if t == 0:
        bnd[BLO] = uint64(0) if topk else tkey
        bnd[ALO] = (uint64(1) << nbits) if topk else tkey
        cnt[ABOVE] = 0
        cnt[NEED] = k if topk else 0
        cnt[DONE] = 0 if topk else 1
    cuda.syncthreads()
    s = nbits - uint64(DIGIT)
    _first_pass(g, r, u, base, m, ef, amask, inf, s, topk, hist, status)
    cuda.syncthreads()
    if mode == TOPK and k == 0:                  # the pass was the NaN check
        return
    d = uint64(DIGIT)
    first = True
    while topk and cnt[DONE] == 0:
        # one digit: histogram (the first came with the first pass), choose
        if not first:
            _digit_pass(u, base, m, amask, s, (uint64(1) << d) - uint64(1), bnd, hist)
            cuda.syncthreads()
        first = False
        choose_digit(hist, int64(1) << int64(d), s, k, bnd, cnt, sha, shb)
        for b in range(t, NBINS, cuda.blockDim.x):
            hist[b] = 0
        if s == 0:
            break
        d = min(uint64(DIGIT), s)
        s -= d
        cuda.syncthreads()
    cuda.syncthreads()
    total = _compact(u, base, m, amask, bnd, cnt, out_idx, out_u, cuda.blockIdx.x * k,
                     zero, sha, shb, status)
    if mode == THRESH and t == cuda.blockDim.x - 1:
        status[1] = total
