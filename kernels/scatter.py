"""`scatter_add(dst, idx, val)`: dst[idx] += val with repeated indices summed.

Index -1 is padding (the sparse collectives pad short messages with it) and is
skipped; any other index outside [0, len(dst)) is a ValueError raised before
dst is touched. Repeated indices each add their value: on CPU in the order
they appear (the same order as np.add.at, so results match bit for bit); on
CUDA with atomic adds, whose order is unspecified (sums of repeated indices
can then differ in the last bit unless the additions are exact).
"""
import numba
import numpy as np
from numba import njit, prange

from . import _dispatch as D

PARALLEL_MIN = 1 << 15   # below this many updates one thread is faster


@njit(cache=True)
def _first_bad(idx, n):
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


def scatter_add_numpy(dst, idx, val):
    """Reference: np.add.at over the non-padding entries."""
    keep = idx != -1
    np.add.at(dst, idx[keep], val[keep])


def _scatter_cpu(dst, idx, val):
    if not dst.flags.c_contiguous:
        raise ValueError("dst must be C-contiguous (it is updated in place)")
    idx, val = np.ascontiguousarray(idx), np.ascontiguousarray(val)
    nth = numba.get_num_threads()
    if nth > 1 and idx.size >= PARALLEL_MIN:
        bounds = np.linspace(0, dst.size, nth + 1).astype(np.int64)
        _scatter_ranges(dst, idx, val, bounds)
    else:
        _scatter_serial(dst, idx, val)


def _scatter_cuda(dst, idx, val):
    from . import _cuda_scatter
    _cuda_scatter.scatter_add(dst, idx, val)


_SCATTER = {"numpy": scatter_add_numpy, "cpu": _scatter_cpu, "cuda": _scatter_cuda}


def _check_indices(idx, n, impl):
    """Out-of-range indices (other than -1) are an error, found before any write."""
    if impl == "cuda":
        from . import _cuda_scatter
        bad = _cuda_scatter.first_bad(idx, n)
    elif impl == "numpy":
        wrong = np.flatnonzero((idx != -1) & ((idx < 0) | (idx >= n)))
        bad = int(wrong[0]) if wrong.size else -1
    else:
        bad = _first_bad(np.ascontiguousarray(idx), n)
    if bad >= 0:
        raise ValueError(f"scatter_add: idx[{bad}] = {int(idx[bad])} is outside "
                         f"[0, {n}) and is not the padding marker -1")


def scatter_add(dst, idx, val, *, impl=None):
    """dst[idx] += val, in place, every occurrence of a repeated index adding.

    dst: 1-D float32/float64; idx: 1-D signed integers (-1 = padding, skipped);
    val: same length as idx, same dtype as dst. NumPy or CuPy arrays.
    """
    D.check_vector("dst", dst)
    D.check_vector("idx", idx, dtypes=(np.dtype(np.int32), np.dtype(np.int64)))
    D.check_vector("val", val, dtypes=(np.dtype(dst.dtype),))
    if idx.shape != val.shape:
        raise ValueError(f"idx {idx.shape} and val {val.shape} must have the same length")
    name = D.choose(impl, dst, idx, val)
    _check_indices(idx, dst.size, name)
    _SCATTER[name](dst, idx, val)
