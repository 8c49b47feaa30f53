"""Device functions shared by the single-block and multi-block radix select.

State of one segment's select (a plain call is one segment): the boundary
[blo, alo) of keys still in doubt and the counts (above, need, done):
every key >= alo is selected, keys in [blo, alo) are selected for the first
`need` of them by index, nothing below blo is. It starts at [0, 2^nbits),
(0, k, 0); each digit narrows the boundary to one bin of its histogram.
The digit choice is made here, by a block of threads on the device: no host
read-back between digits.
"""
from numba import cuda, int64, uint64

DIGIT = 11                      # radix digit width: 2048 bins
NBINS = 1 << DIGIT
BLO, ALO = 0, 1                 # bnd[...]: the boundary [blo, alo)
ABOVE, NEED, DONE = 0, 1, 2     # cnt[...]: keys above, ties to take, resolved


@cuda.jit(device=True)
def block_scan(sha, a, shb, b):
    """Inclusive prefix sums of a and of b over the block's threads
    (Hillis-Steele in shared memory, both at once: half the barriers)."""
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
    res_a = sha[t]
    res_b = shb[t]
    cuda.syncthreads()              # the arrays may be reused at once
    return res_a, res_b


@cuda.jit(device=True)
def choose_digit(hist, nb, shift, k, bnd, cnt, sha, shb):
    """Narrow the boundary to the bin of the k-th largest key.

    hist[0:nb]: counts of this digit among the boundary keys; shift: bits
    below the digit. Every thread of the block calls it. Thread t sums a run
    of bins from the top, a block scan gives the count above each run, and
    the one thread whose run holds the k-th key walks it and writes the new
    state. Ends with a barrier (the state is then visible to the block)."""
    t = cuda.threadIdx.x
    per = (nb + cuda.blockDim.x - 1) // cuda.blockDim.x
    hi = max(0, nb - t * per)           # this thread's bins: [lo, hi), from the top
    lo = max(0, hi - per)
    own = 0
    for b in range(lo, hi):
        own += hist[b]
    above0 = cnt[ABOVE]                 # read before anyone writes (scan barriers)
    incl = block_scan(sha, own, shb, 0)[0]
    excl = incl - own
    if own > 0 and above0 + excl < k and above0 + incl >= k:
        above = above0 + excl
        b = hi - 1
        while above + hist[b] < k:      # walk down to the bin of the k-th key
            above += hist[b]
            b -= 1
        blo = bnd[BLO] + (uint64(b) << shift)
        bnd[BLO] = blo
        bnd[ALO] = blo + (uint64(1) << shift)
        cnt[ABOVE] = above
        cnt[NEED] = k - above
        if above + hist[b] == k:        # the whole bin is in: resolved
            cnt[DONE] = 1
    cuda.syncthreads()


@cuda.jit(device=True)
def classify(kk, blo, alo):
    """(1 if key kk is above the boundary, 1 if it is in it) as int64."""
    a = int64(1) if kk >= alo else int64(0)
    b = int64(1) if kk >= blo and kk < alo else int64(0)
    return a, b


@cuda.jit(device=True)
def take(a, b, above, bseen, need):
    """Output position of an element (above count and boundary count before it),
    or -1 if it is not selected: pos = above + min(bseen, need)."""
    if a == 1 or (b == 1 and bseen < need):
        return above + min(bseen, need)
    return int64(-1)
