"""Numba CPU mixing: x += w * (other - x), two rounded operations, no FMA."""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _mix_par(x, other, w):
    for i in prange(x.size):
        x[i] += w * (other[i] - x[i])


def mix(x, other, w):
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (it is updated in place)")
    _mix_par(x, np.ascontiguousarray(other), w)
