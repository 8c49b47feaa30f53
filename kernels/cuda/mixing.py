"""Numba CUDA mix: x += w * (other - x), one thread per element.

The GPU compiler contracts a*b + c into a fused multiply-add by default, which
rounds once instead of twice and so differs from NumPy in the last bit. The
product is therefore taken with libdevice's explicitly rounded multiply
(__fmul_rn / __dmul_rn), which is never contracted. The simulator has no
libdevice; a plain product there is already rounded (Python floats).
"""
import numpy as np
from numba import cuda

from .util import SIM, THREADS, Device, blocks

if SIM:
    @cuda.jit(device=True)
    def _mul32(a, b):
        return a * b

    _mul64 = _mul32
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _mul32(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True)
    def _mul64(a, b):
        return libdevice.dmul_rn(a, b)


@cuda.jit(cache=True)
def _mix32(x, other, w):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = x[i] + _mul32(w, other[i] - x[i])


@cuda.jit(cache=True)
def _mix64(x, other, w):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = x[i] + _mul64(w, other[i] - x[i])


def mix(x, other, w):
    if x.size == 0:
        return
    dev = Device(x, other)
    d = dev.put(x)
    kern = _mix32 if x.dtype == np.float32 else _mix64
    kern[blocks(x.size), THREADS, dev.stream](d, dev.put(other), w)
    dev.write_back(d, x)
