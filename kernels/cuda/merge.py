"""Numba CUDA merge_sum and coalesce (kernels/spardl_merge.py): the union of
ascending selections with summed values, on the device.

A merge of A (la valid entries after its leading -1s) and B is cut into C
chunks of L consecutive outputs of the plain merge (A first on ties); a
binary search on the diagonal gives each chunk's start in A and B (merge
path), and one thread walks its chunk. An entry of B equal to the A entry
just before it is a duplicate: it adds to that output and makes none. Three
launches, nothing read back:

    _count  chunk c -> counts[c], the outputs it makes
    _scan   one block: offsets = exclusive prefix sum of counts, total
    _write  chunk c writes its outputs from offsets[c], right-aligned in a
            buffer of len(A) + len(B) whose first entries are -1 / 0

Right-aligned output with -1 in front is itself a valid selection (leading
-1s are padding), so `coalesce` chains merges on the device and reads back
only the final count. Values are added as the CPU merge adds them:
(0 + a) + b, so the bits match it (a lone -0.0 becomes +0.0).
"""
import numpy as np
from numba import cuda

from .scratch import scratch
from .util import SIM, THREADS, Device, blocks

MIN_CHUNK = 4 if SIM else 32          # outputs per thread at least
MAX_CHUNKS = THREADS * 16             # the scan's block sums THREADS segments


@cuda.jit(device=True)
def _lead(a):
    # number of leading -1s: first position holding an index >= 0
    lo = 0
    hi = a.size
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit(device=True)
def _split(ia, sa, la, ib, sb, lb, d):
    # how many of A's entries are among the first d outputs of the merge
    lo = max(0, d - lb)
    hi = min(d, la)
    while lo < hi:
        mid = (lo + hi) // 2
        if ia[sa + mid] <= ib[sb + d - mid - 1]:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit(cache=True)
def _count(ia, ib, L, counts):
    sa = _lead(ia)
    sb = _lead(ib)
    la = ia.size - sa
    lb = ib.size - sb
    for c in range(cuda.grid(1), counts.size, cuda.gridsize(1)):
        d0 = min(c * L, la + lb)
        d1 = min(d0 + L, la + lb)
        i = _split(ia, sa, la, ib, sb, lb, d0)
        j = d0 - i
        n = 0
        for _ in range(d0, d1):
            if i < la and (j >= lb or ia[sa + i] <= ib[sb + j]):
                n += 1
                i += 1
            else:
                if not (i > 0 and ia[sa + i - 1] == ib[sb + j]):
                    n += 1
                j += 1
        counts[c] = n


@cuda.jit(cache=True)
def _scan(counts, partials, offsets, total):
    # one block: each thread sums a segment, thread 0 scans the sums
    t = cuda.threadIdx.x
    T = cuda.blockDim.x
    seg = (counts.size + T - 1) // T
    lo = min(t * seg, counts.size)
    hi = min(lo + seg, counts.size)
    s = 0
    for p in range(lo, hi):
        s += counts[p]
    partials[t] = s
    cuda.syncthreads()
    if t == 0:
        run = 0
        for q in range(T):
            v = partials[q]
            partials[q] = run
            run += v
        total[0] = run
    cuda.syncthreads()
    run = partials[t]
    for p in range(lo, hi):
        offsets[p] = run
        run += counts[p]


@cuda.jit(cache=True)
def _write(ia, va, ib, vb, L, offsets, total, oi, ov, zero):
    sa = _lead(ia)
    sb = _lead(ib)
    la = ia.size - sa
    lb = ib.size - sb
    pad = oi.size - total[0]
    for p in range(cuda.grid(1), pad, cuda.gridsize(1)):
        oi[p] = -1
        ov[p] = zero
    for c in range(cuda.grid(1), offsets.size, cuda.gridsize(1)):
        d0 = min(c * L, la + lb)
        d1 = min(d0 + L, la + lb)
        i = _split(ia, sa, la, ib, sb, lb, d0)
        j = d0 - i
        o = pad + offsets[c]
        for _ in range(d0, d1):
            if i < la and (j >= lb or ia[sa + i] <= ib[sb + j]):
                # (0 + a) + b when B holds the same index next
                v = zero + va[sa + i]
                if j < lb and ib[sb + j] == ia[sa + i]:
                    v = v + vb[sb + j]
                oi[o] = ia[sa + i]
                ov[o] = v
                o += 1
                i += 1
            else:
                if not (i > 0 and ia[sa + i - 1] == ib[sb + j]):
                    oi[o] = ib[sb + j]
                    ov[o] = zero + vb[sb + j]
                    o += 1
                j += 1


def _merge(dev, ia, va, ib, vb):
    """Device merge: (oi, ov, total), oi/ov right-aligned with -1 / 0 in
    front, total a one-element device array; nothing read back."""
    N = ia.size + ib.size
    C = max(1, min(MAX_CHUNKS, -(-N // MIN_CHUNK)))
    L = np.int64(max(1, -(-N // C)))
    counts = scratch(dev, "merge.counts", C, np.int64)
    offsets = scratch(dev, "merge.offsets", C, np.int64)
    partials = scratch(dev, "merge.partials", THREADS, np.int64)
    total = dev.empty(1, np.int64)
    oi, ov = dev.empty(N, ia.dtype), dev.empty(N, va.dtype)
    grid = blocks(C)
    _count[grid, THREADS, dev.stream](ia, ib, L, counts)
    _scan[1, THREADS, dev.stream](counts, partials, offsets, total)
    _write[grid, THREADS, dev.stream](ia, va, ib, vb, L, offsets, total, oi, ov,
                                      va.dtype.type(0))
    return oi, ov, total


def _typed(dev, sels):
    """Device copies, indices in one integer dtype and values in the first's."""
    idt = np.result_type(*[i.dtype for i, _ in sels])
    vdt = np.dtype(sels[0][1].dtype)
    return [(dev.put(i.astype(idt, copy=False)), dev.put(v.astype(vdt, copy=False)))
            for i, v in sels]


def coalesce(sels):
    """Merge the selections in list order on the device; one count read back."""
    dev = Device(*[a for s in sels for a in s])
    sels = _typed(dev, sels)
    # the first two merge directly: 0 + (0 + a) has the bits of 0 + a
    if len(sels) > 1:
        (ia, va), rest = sels[0], sels[1:]
    else:
        (ia, va), rest = (sels[0][0][:0], sels[0][1][:0]), sels
    total = None
    for ib, vb in rest:
        if ia.size + ib.size == 0:
            continue
        ia, va, total = _merge(dev, ia, va, ib, vb)
    t = 0 if total is None else int(dev.host(total)[0])
    start = ia.size - t
    return dev.result(ia[start:]), dev.result(va[start:])


def merge_sum(ia, va, ib, vb):
    return coalesce([(ia, va), (ib, vb)])
