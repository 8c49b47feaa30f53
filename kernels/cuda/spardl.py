"""Numba CUDA versions of kernels/spardl_residual.py.

restore_outside: one thread per logged entry, a binary search in `keep`
(indices are unique, so no two threads write one element).
densify_blocks: a grid-stride fill with zeros, then one thread per entry
adding val / divisor (atomic adds: exact for unique indices, as 0 + v).
"""
import numpy as np
from numba import cuda

from .util import THREADS, Device, blocks


@cuda.jit(cache=True)
def _restore(dst, idx, old, keep, inside):
    for i in range(cuda.grid(1), idx.size, cuda.gridsize(1)):
        j = idx[i]
        lo = 0
        hi = keep.size
        while lo < hi:                      # first keep >= j
            mid = (lo + hi) // 2
            if keep[mid] < j:
                lo = mid + 1
            else:
                hi = mid
        found = lo < keep.size and keep[lo] == j
        if found == inside:
            dst[j] = old[i]


@cuda.jit(cache=True)
def _fill_zero(out):
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = 0


@cuda.jit(cache=True)
def _add_blocks(out, idx, val, m, c, div):
    for e in range(cuda.grid(1), idx.size, cuda.gridsize(1)):
        i = idx[e]
        if i != -1:
            g = (e // m) * c + i
            if g < out.size:
                cuda.atomic.add(out, g, val[e] / div)


def restore_outside(dst, idx, old, keep, inside):
    if idx.size == 0:
        return
    dev = Device(dst, idx, old, keep)
    d = dev.put(dst)
    _restore[blocks(idx.size), THREADS, dev.stream](d, dev.put(idx), dev.put(old),
                                                    dev.put(keep), bool(inside))
    dev.write_back(d, dst)


def densify_blocks(out, idx, val, c, divisor):
    dev = Device(out, idx, val)
    d = dev.put(out)
    if out.size:
        _fill_zero[blocks(out.size), THREADS, dev.stream](d)
    if idx.size:
        m = idx.shape[1]
        _add_blocks[blocks(idx.size), THREADS, dev.stream](
            d, dev.put(idx.reshape(-1)), dev.put(val.reshape(-1)), np.int64(m), np.int64(c),
            np.dtype(out.dtype).type(divisor))
    dev.write_back(d, out)
