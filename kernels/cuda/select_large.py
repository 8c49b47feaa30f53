"""Multi-block radix select, device-resident: grid (blocks, segments).

Per segment: bnd/cnt hold the state (select_device.py), hist a 2048-bin
global histogram, arrive a block counter. Each histogram kernel ends with
"last block chooses": every block adds its shared histogram into hist, then
(after a memory fence) counts itself in arrive; the block that arrives last
sees every count, chooses the digit (choose_digit) and clears hist and
arrive for the next kernel. So the host launches a fixed sequence, reads
nothing back, and a resolved segment makes the remaining kernels return.

1. first:      r = g + r (ef), NaN/Inf flag, top digit's histogram;
2. collect:    per tile of TILE keys, the candidates key >= blo (index, bits)
               go to the tile's slot (TILE entries) in index order, count to
               tcnt; the next digit's histogram of the boundary keys;
3. cand_hist:  further digits, over the candidates only (about 1-2 % of n
               at 1 % density: the top digit's bin is small);
4. counts:     per tile, candidates above / in the boundary; the last block
               scans them into tile offsets (status[1] = total for thresholds);
5. write:      each tile's selection at its final, ordered places (zeroing
               r there for error feedback unless a NaN/Inf was met).
"""
from numba import cuda, int32, int64

from .select_device import ALO, BLO, DONE, NBINS, NEED, block_scan, choose_digit, classify, take
from .util import THREADS

ITEMS = 8                       # consecutive keys per thread in a tile
TILE = THREADS * ITEMS


@cuda.jit(device=True)
def _zero_shared(hist):
    for b in range(cuda.threadIdx.x, NBINS, cuda.blockDim.x):
        hist[b] = 0
    cuda.syncthreads()


@cuda.jit(device=True)
def _last_to_arrive(arrive, seg, flag):
    # True in the block that arrives last; the fences make every block's
    # global writes before its arrival visible to that block
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        last = cuda.atomic.add(arrive, seg, 1) == cuda.gridDim.x - 1
        flag[0] = 1 if last else 0
    cuda.syncthreads()
    cuda.threadfence()
    return flag[0] != 0


@cuda.jit(device=True)
def _flush_and_choose(sh, nb, shift, k, seg, hist, bnd, cnt, arrive, flag, sha, shb):
    # add the shared histogram into hist[seg]; the last block to arrive chooses
    cuda.syncthreads()
    t = cuda.threadIdx.x
    for b in range(t, nb, cuda.blockDim.x):
        if sh[b] != 0:
            cuda.atomic.add(hist, (seg, b), int64(sh[b]))
    if _last_to_arrive(arrive, seg, flag):
        choose_digit(hist[seg], nb, shift, k, bnd[seg], cnt[seg], sha, shb)
        for b in range(t, NBINS, cuda.blockDim.x):
            hist[seg, b] = 0
        if t == 0:
            arrive[seg] = 0


@cuda.jit(cache=True)
def init(bnd, cnt, arrive, hist, blo, alo, need, done):
    """Every segment's state: boundary [blo, alo), (0 above, need, done), no
    arrivals, an empty histogram (a kernel: no host-to-device copy)."""
    for i in range(cuda.grid(1), hist.size, cuda.gridsize(1)):
        hist[i // NBINS, i % NBINS] = 0
    for s in range(cuda.grid(1), arrive.size, cuda.gridsize(1)):
        bnd[s, BLO] = blo
        bnd[s, ALO] = alo
        cnt[s, 0] = 0
        cnt[s, NEED] = need
        cnt[s, DONE] = done
        arrive[s] = 0


@cuda.jit(cache=True)
def first(g, r, u, m, ef, amask, inf, shift, k, hist, bnd, cnt, arrive, status):
    """Pass 1 over segment blockIdx.y (grid-stride); top digit at `shift`."""
    sh = cuda.shared.array(NBINS, int32)
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    flag = cuda.shared.array(1, int32)
    seg = cuda.blockIdx.y
    base = seg * m
    _zero_shared(sh)
    step = cuda.gridDim.x * cuda.blockDim.x
    for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, m, step):
        if ef:
            r[base + i] = g[base + i] + r[base + i]
        kk = u[base + i] & amask
        if kk >= inf:
            status[0] = 1
        cuda.atomic.add(sh, kk >> shift, 1)
    if k > 0:
        _flush_and_choose(sh, NBINS, shift, k, seg, hist, bnd, cnt, arrive, flag, sha, shb)


@cuda.jit(cache=True)
def collect(u, m, nt, amask, check, inf, shift, dmask, k, cand_i, cand_u, tcnt,
            hist, bnd, cnt, arrive, status):
    """Pass 2: candidates key >= blo into the tiles' slots, next digit's histogram."""
    sh = cuda.shared.array(NBINS, int32)
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    flag = cuda.shared.array(1, int32)
    seg = cuda.blockIdx.y
    base = seg * m
    blo = bnd[seg, BLO]
    alo = bnd[seg, ALO]
    more = cnt[seg, DONE] == 0
    _zero_shared(sh)
    for tile in range(cuda.blockIdx.x, nt, cuda.gridDim.x):
        lo = min(m, tile * TILE + cuda.threadIdx.x * ITEMS)
        hi = min(m, lo + ITEMS)
        c = int64(0)
        for i in range(lo, hi):
            kk = u[base + i] & amask
            if check and kk >= inf:
                status[0] = 1
            c += 1 if kk >= blo else 0
            if more and kk >= blo and kk < alo:
                cuda.atomic.add(sh, (kk >> shift) & dmask, 1)
        incl = block_scan(sha, c, shb, 0)[0]
        slot = (seg * nt + tile) * TILE + incl - c
        for i in range(lo, hi):
            bits = u[base + i]
            if (bits & amask) >= blo:
                cand_i[slot] = i
                cand_u[slot] = bits
                slot += 1
        if cuda.threadIdx.x == cuda.blockDim.x - 1:
            tcnt[seg * nt + tile] = incl
    if more:
        _flush_and_choose(sh, int64(dmask) + 1, shift, k, seg, hist, bnd, cnt, arrive, flag,
                          sha, shb)


@cuda.jit(cache=True)
def cand_hist(cand_u, tcnt, nt, amask, shift, dmask, k, hist, bnd, cnt, arrive):
    """Pass 3 (one per further digit): the digit's histogram over the candidates."""
    sh = cuda.shared.array(NBINS, int32)
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    flag = cuda.shared.array(1, int32)
    seg = cuda.blockIdx.y
    if cnt[seg, DONE] != 0:                     # resolved: nothing to do
        return
    blo = bnd[seg, BLO]
    alo = bnd[seg, ALO]
    _zero_shared(sh)
    for tile in range(cuda.blockIdx.x, nt, cuda.gridDim.x):
        slot = (seg * nt + tile) * TILE
        for j in range(cuda.threadIdx.x, tcnt[seg * nt + tile], cuda.blockDim.x):
            kk = cand_u[slot + j] & amask
            if kk >= blo and kk < alo:
                cuda.atomic.add(sh, (kk >> shift) & dmask, 1)
    _flush_and_choose(sh, int64(dmask) + 1, shift, k, seg, hist, bnd, cnt, arrive, flag,
                      sha, shb)


@cuda.jit(device=True)
def _scan_tiles(acnt, bcnt, aoff, boff, seg, nt, sha, shb):
    # aoff[seg, j] = sum(acnt[seg, :j]) for j <= nt (the same for b)
    t = cuda.threadIdx.x
    per = (nt + cuda.blockDim.x - 1) // cuda.blockDim.x
    lo = min(nt, t * per)
    hi = min(nt, lo + per)
    sa = int64(0)
    sb = int64(0)
    for j in range(lo, hi):
        sa += acnt[seg * nt + j]
        sb += bcnt[seg * nt + j]
    ia, ib = block_scan(sha, sa, shb, sb)
    ra = ia - sa
    rb = ib - sb
    for j in range(lo, hi):
        aoff[seg, j] = ra
        boff[seg, j] = rb
        ra += acnt[seg * nt + j]
        rb += bcnt[seg * nt + j]
    if t == cuda.blockDim.x - 1:
        aoff[seg, nt] = ra
        boff[seg, nt] = rb


@cuda.jit(device=True)
def _tile_range(tcnt, seg, nt, tile):
    # this thread's candidate slots of the tile: [lo, hi)
    n = tcnt[seg * nt + tile]
    lo = min(n, cuda.threadIdx.x * ITEMS)
    return lo, min(n, lo + ITEMS)


@cuda.jit(cache=True)
def counts(cand_u, tcnt, nt, amask, acnt, bcnt, aoff, boff, bnd, arrive, status):
    """Pass 4: per tile, candidates above / in the boundary; last block scans."""
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    flag = cuda.shared.array(1, int32)
    seg = cuda.blockIdx.y
    t = cuda.threadIdx.x
    blo = bnd[seg, BLO]
    alo = bnd[seg, ALO]
    for tile in range(cuda.blockIdx.x, nt, cuda.gridDim.x):
        slot = (seg * nt + tile) * TILE
        lo, hi = _tile_range(tcnt, seg, nt, tile)
        ca = int64(0)
        cb = int64(0)
        for j in range(lo, hi):
            a, b = classify(cand_u[slot + j] & amask, blo, alo)
            ca += a
            cb += b
        sa, sb = block_scan(sha, ca, shb, cb)
        if t == cuda.blockDim.x - 1:
            acnt[seg * nt + tile] = sa
            bcnt[seg * nt + tile] = sb
    if _last_to_arrive(arrive, seg, flag):
        _scan_tiles(acnt, bcnt, aoff, boff, seg, nt, sha, shb)
        cuda.syncthreads()
        if t == 0:
            arrive[seg] = 0
            status[1] = aoff[seg, nt]


@cuda.jit(cache=True)
def write(cand_i, cand_u, tcnt, nt, amask, aoff, boff, bnd, cnt, k, out_idx, out_u,
          u, m, zero, status):
    """Pass 5: the selection of each tile at its final, ordered places."""
    sha = cuda.shared.array(THREADS, int64)
    shb = cuda.shared.array(THREADS, int64)
    seg = cuda.blockIdx.y
    blo = bnd[seg, BLO]
    alo = bnd[seg, ALO]
    need = cnt[seg, NEED]
    zeroing = zero and status[0] == 0
    for tile in range(cuda.blockIdx.x, nt, cuda.gridDim.x):
        slot = (seg * nt + tile) * TILE
        lo, hi = _tile_range(tcnt, seg, nt, tile)
        ca = int64(0)
        cb = int64(0)
        for j in range(lo, hi):
            a, b = classify(cand_u[slot + j] & amask, blo, alo)
            ca += a
            cb += b
        sa, sb = block_scan(sha, ca, shb, cb)
        above = aoff[seg, tile] + sa - ca
        bseen = boff[seg, tile] + sb - cb
        for j in range(lo, hi):
            bits = cand_u[slot + j]
            a, b = classify(bits & amask, blo, alo)
            pos = take(a, b, above, bseen, need)
            if pos >= 0:
                out_idx[seg * k + pos] = cand_i[slot + j]
                out_u[seg * k + pos] = bits
                if zeroing:
                    u[seg * m + cand_i[slot + j]] = 0
            above += a
            bseen += b
