"""Numba CUDA scatter_add: one thread per update, atomic adds, -1 skipped.

Atomic float adds commute only up to rounding: repeated indices are summed in
an unspecified order. In debug mode (kernels.set_checks) indices are validated
by `first_bad` (a min-reduction of the positions of bad indices, read back)
before any add, so a bad index leaves dst as it was; otherwise nothing is read
back and the kernel skips every index outside [0, n).
"""
import numpy as np
from numba import cuda

from .util import THREADS, Device, blocks


@cuda.jit(cache=True)
def _first_bad(idx, n, out):
    # out[0] = min position i with idx[i] outside [0, n) and != -1
    for i in range(cuda.grid(1), idx.size, cuda.gridsize(1)):
        j = idx[i]
        if j != -1 and (j < 0 or j >= n):
            cuda.atomic.min(out, 0, i)


@cuda.jit(cache=True)
def _scatter(dst, idx, val):
    for i in range(cuda.grid(1), idx.size, cuda.gridsize(1)):
        j = idx[i]
        if j >= 0 and j < dst.size:
            cuda.atomic.add(dst, j, val[i])


def first_bad(idx, n):
    """Position of the first index outside [0, n) that is not -1, else -1."""
    if idx.size == 0:
        return -1
    dev = Device(idx)
    out = dev.put(np.array([idx.size], np.int64))
    _first_bad[blocks(idx.size), THREADS, dev.stream](dev.put(idx), np.int64(n), out)
    bad = int(dev.host(out)[0])
    return -1 if bad == idx.size else bad


def scatter_add(dst, idx, val):
    if idx.size == 0:
        return
    dev = Device(dst, idx, val)
    d = dev.put(dst)
    _scatter[blocks(idx.size), THREADS, dev.stream](d, dev.put(idx), dev.put(val))
    dev.write_back(d, dst)
