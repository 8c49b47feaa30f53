"""Numba CPU scatter-add: dst[idx] += val in input order (np.add.at's order)."""
import numba
import numpy as np
from numba import njit, prange

PARALLEL_MIN = 1 << 15   # below this many updates one thread is faster


@njit(cache=True)
def first_bad(idx, n):
    """Position of the first index outside [0, n) that is not -1, else -1."""
    for i in range(idx.size):
        j = idx[i]
        if j != -1 and (j < 0 or j >= n):
            return i
    return -1


@njit(cache=True)
def _scatter_serial(dst, idx, val):
    for i in range(idx.size):
        j = idx[i]
        if j >= 0:
            dst[j] += val[i]


@njit(parallel=True, cache=True)
def _scatter_ranges(dst, idx, val, bounds):
    # thread c owns dst[bounds[c]:bounds[c+1]] and applies, in input order, the
    # updates that land there: no two threads write one element, no atomics
    for c in prange(bounds.size - 1):
        lo, hi = bounds[c], bounds[c + 1]
        for i in range(idx.size):
            j = idx[i]
            if j >= lo and j < hi:
                dst[j] += val[i]


def scatter_add(dst, idx, val):
    if not dst.flags.c_contiguous:
        raise ValueError("dst must be C-contiguous (it is updated in place)")
    idx, val = np.ascontiguousarray(idx), np.ascontiguousarray(val)
    nth = numba.get_num_threads()
    if nth > 1 and idx.size >= PARALLEL_MIN:
        bounds = np.linspace(0, dst.size, nth + 1).astype(np.int64)
        _scatter_ranges(dst, idx, val, bounds)
    else:
        _scatter_serial(dst, idx, val)
