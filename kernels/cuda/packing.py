"""Numba CUDA pack/unpack: 32-bit word copies (see kernels/packing.py for the layout).

Messages are multiples of 4 bytes and both blocks start 4-byte aligned, so one
thread per word copies exact bit patterns (no float loads, NaN payloads kept).
"""
import numpy as np
from numba import cuda

from .util import THREADS, Device, blocks
from ..common import packed_nbytes


@cuda.jit(cache=True)
def _pack(iw, vw, out):
    # out = iw ++ vw (uint32 words)
    k = iw.size
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = iw[i] if i < k else vw[i - k]


@cuda.jit(cache=True)
def _unpack(words, iw, vw):
    k = iw.size
    for i in range(cuda.grid(1), words.size, cuda.gridsize(1)):
        if i < k:
            iw[i] = words[i]
        else:
            vw[i - k] = words[i]


def pack(idx, val):
    dev = Device(idx, val)
    k = idx.size
    buf = dev.empty(packed_nbytes(k, val.dtype), np.uint8)
    if k:
        words = buf.view(np.uint32)
        _pack[blocks(words.size), THREADS, dev.stream](
            dev.put(idx).view(np.uint32), dev.put(val).view(np.uint32), words)
    return dev.result(buf)


def unpack(buf, k, dtype):
    dev = Device(buf)
    idx, val = dev.empty(k, np.int32), dev.empty(k, dtype)
    if k:
        if not dev.cupy or buf.data.ptr % 4 == 0:
            words = dev.put(buf[:packed_nbytes(k, dtype)]).view(np.uint32)
        else:                               # misaligned slice: copy it aligned
            words = dev.xp.array(buf[:packed_nbytes(k, dtype)]).view(np.uint32)
        _unpack[blocks(words.size), THREADS, dev.stream](
            words, idx.view(np.uint32), val.view(np.uint32))
    return dev.result(idx), dev.result(val)
