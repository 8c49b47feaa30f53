"""Sparse message (de)serialisation: `pack(idx, val) -> buf`,
`unpack(buf, k, dtype) -> (idx, val)`, `packed_nbytes(k, dtype)`.

Layout of a message of k pairs (native byte order, no header, no padding):

    bytes [0, 4k)            k int32 indices
    bytes [4k, 4k + k*s)     k values of the float dtype (s = itemsize)

so one sparse message is one contiguous uint8 buffer and one MPI send; the
receiver knows k and the dtype from the algorithm. Both are copied as 32-bit
words, never through float registers: NaN payloads and -0.0 survive exactly.
The buffer is 4-byte aligned at the start of the value block only; pack and
unpack never need more (float64 values start at 4k, possibly not 8-aligned).
"""
import numbers

import numpy as np

from . import common as D
from .common import packed_nbytes
from .cpu import packing as cpu


def _as_int32(idx):
    """int32 indices; int64 ones are accepted when they fit (on the device
    that check is a read-back: debug mode only, kernels.set_checks)."""
    if idx.dtype == np.int32:
        return idx
    checked = D.checks() or not D.is_device_array(idx)
    if checked and idx.size and (int(idx.min()) < -2**31 or int(idx.max()) >= 2**31):
        raise ValueError("pack: indices do not fit in int32")
    return idx.astype(np.int32)


# ---------------------------------------------------------------- NumPy reference

def pack_numpy(idx, val):
    k = idx.size
    buf = np.empty(packed_nbytes(k, val.dtype), np.uint8)
    buf[:4 * k].view(np.int32)[:] = idx
    buf[4 * k:].view(np.uint8)[:] = val.view(np.uint8)
    return buf


def unpack_numpy(buf, k, dtype):
    idx = buf[:4 * k].view(np.int32).copy()
    val = buf[4 * k:packed_nbytes(k, dtype)].copy().view(dtype)
    return idx, val


def _pack_cuda(idx, val):
    from .cuda import packing
    return packing.pack(idx, val)


def _unpack_cuda(buf, k, dtype):
    from .cuda import packing
    return packing.unpack(buf, k, dtype)


_PACK = {"numpy": pack_numpy, "cpu": cpu.pack, "cuda": _pack_cuda}
_UNPACK = {"numpy": unpack_numpy, "cpu": cpu.unpack, "cuda": _unpack_cuda}


# ---------------------------------------------------------------- public API

def pack(idx, val, *, impl=None):
    """One uint8 message buffer holding k int32 indices, then k values.

    idx: 1-D integers (int32, or int64 that fit); val: 1-D float32/float64,
    same length. Returns a new uint8 array of packed_nbytes(k, val.dtype).
    """
    D.check_vector("idx", idx, dtypes=(np.dtype(np.int32), np.dtype(np.int64)))
    D.check_vector("val", val)
    if idx.shape != val.shape:
        raise ValueError(f"idx {idx.shape} and val {val.shape} must have the same length")
    return D.dispatch(_PACK, impl, idx, val)(_as_int32(idx), val)


def unpack(buf, k, dtype, *, impl=None):
    """(idx, val) from a message made by pack: new int32 and `dtype` arrays.

    buf: a contiguous 1-D array (any dtype; read as bytes) of at least
    packed_nbytes(k, dtype) bytes; extra bytes at the end are ignored.
    """
    dtype = np.dtype(dtype)
    if dtype not in D.FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if getattr(buf, "ndim", None) != 1 or not buf.flags.c_contiguous:
        raise ValueError("buf must be a contiguous 1-D array")
    k = int(k)
    buf = buf.view(np.uint8)
    if buf.size < packed_nbytes(k, dtype):
        raise ValueError(f"buf holds {buf.size} bytes; {k} pairs of int32 + {dtype} "
                         f"need {packed_nbytes(k, dtype)}")
    return D.dispatch(_UNPACK, impl, buf)(buf, k, dtype)
