"""Numba CPU kernels of the SparDL step ends (kernels/spardl_residual.py).

Each kernel checks its input first and returns a non-zero code, having
written nothing, when it is bad; the public op then raises the message.
"""
import numpy as np
from numba import njit


@njit(cache=True)
def _restore_merge(dst, idx, old, keep, inside):
    # checks first (nothing written on bad input): 1 = keep, 2 = idx
    n = dst.size
    for q in range(1, keep.size):
        if keep[q] <= keep[q - 1]:
            return 1
    for i in range(idx.size):
        if idx[i] < 0 or idx[i] >= n:
            return 2
    # merge while idx ascends; after a descent, binary search for the rest
    q = 0
    prev = -1
    merging = True
    for i in range(idx.size):
        j = idx[i]
        merging = merging and j >= prev
        if merging:
            while q < keep.size and keep[q] < j:
                q += 1
            found = q < keep.size and keep[q] == j
        else:
            p = np.searchsorted(keep, j)
            found = p < keep.size and keep[p] == j
        prev = j
        if found == inside:
            dst[j] = old[i]
    return 0


def restore_outside(dst, idx, old, keep, inside):
    """Restore by a merge with keep; 0, or an error code (nothing written)."""
    if not dst.flags.c_contiguous:
        raise ValueError("dst must be C-contiguous (it is updated in place)")
    return _restore_merge(dst, np.ascontiguousarray(idx), np.ascontiguousarray(old),
                          np.ascontiguousarray(keep), bool(inside))


@njit(cache=True)
def _densify(out, idx, val, c, div):
    # check first (1 = an index outside [0, c) that is not -1), then one pass
    for b in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            if idx[b, j] < -1 or idx[b, j] >= c:
                return 1
    n = out.size
    zero = out.dtype.type(0)
    p = 0                                   # out[:p] is final apart from late adds
    for b in range(idx.shape[0]):
        base = b * c
        for j in range(idx.shape[1]):
            i = idx[b, j]
            if i == -1:
                continue
            g = base + i
            if g >= n:
                continue
            v = zero + val[b, j] / div
            if g >= p:
                out[p:g] = 0                # (a slice store: vectorised)
                out[g] = v
                p = g + 1
            else:
                out[g] += v
    out[p:] = 0
    return 0


def densify_blocks(out, idx, val, c, divisor):
    """One ordered pass writing out; 0, or an error code (nothing written)."""
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (it is written in place)")
    return _densify(out, np.ascontiguousarray(idx), np.ascontiguousarray(val), np.int64(c),
                    out.dtype.type(divisor))


@njit(cache=True)
def _merge(ia, va, ib, vb, oi, ov):
    i = 0
    j = 0
    while i < ia.size and ia[i] < 0:
        i += 1
    while j < ib.size and ib[j] < 0:
        j += 1
    o = 0
    while i < ia.size and j < ib.size:
        a = ia[i]
        b = ib[j]
        if a < b:
            oi[o] = a
            ov[o] += va[i]
            i += 1
        elif b < a:
            oi[o] = b
            ov[o] += vb[j]
            j += 1
        else:
            oi[o] = a
            ov[o] += va[i]
            ov[o] += vb[j]
            i += 1
            j += 1
        o += 1
    while i < ia.size:
        oi[o] = ia[i]
        ov[o] += va[i]
        i += 1
        o += 1
    while j < ib.size:
        oi[o] = ib[j]
        ov[o] += vb[j]
        j += 1
        o += 1
    return o


def merge_sum(ia, va, ib, vb):
    idt = np.result_type(ia.dtype, ib.dtype)
    ia = np.ascontiguousarray(ia, idt)
    ib = np.ascontiguousarray(ib, idt)
    va = np.ascontiguousarray(va)
    vb = np.ascontiguousarray(vb, va.dtype)
    oi = np.empty(ia.size + ib.size, idt)
    ov = np.zeros(ia.size + ib.size, va.dtype)
    o = _merge(ia, va, ib, vb, oi, ov)
    return oi[:o], ov[:o]
