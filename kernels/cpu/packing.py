"""Numba CPU pack/unpack: 32-bit word copies (layout in kernels/packing.py)."""
import numpy as np
from numba import njit

from ..common import packed_nbytes


# Whole messages are multiples of 4 bytes: copy 32-bit words.

@njit(cache=True)
def _copy_words(dst, src):
    for i in range(src.size):
        dst[i] = src[i]


def pack(idx, val):
    k = idx.size
    buf = np.empty(packed_nbytes(k, val.dtype), np.uint8)
    words = buf.view(np.uint32)
    _copy_words(words[:k], np.ascontiguousarray(idx).view(np.uint32))
    _copy_words(words[k:], np.ascontiguousarray(val).view(np.uint32))
    return buf


def unpack(buf, k, dtype):
    words = buf[:packed_nbytes(k, dtype)].view(np.uint32)
    idx = np.empty(k, np.int32)
    val = np.empty(k, dtype)
    _copy_words(idx.view(np.uint32), words[:k])
    _copy_words(val.view(np.uint32), words[k:])
    return idx, val
