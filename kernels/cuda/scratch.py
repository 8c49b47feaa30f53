"""Device scratch buffers kept between calls (launch overhead, not memory).

A kernel that needs a small temporary (per-chunk counts, a one-element
total) takes it from here instead of allocating it at every call: one buffer
per (name, dtype, stream, mode), grown by half again when too small, and a
view of its first n items is returned. Work on one stream runs in order, so
the next call's kernels overwrite a buffer only after this call's kernels
have read it; a buffer is never shared between streams.
"""
import numpy as np

_CACHE = {}


def _key(dev, name, dtype):
    if dev.cupy:
        cp = dev.xp
        where = ("cupy", cp.cuda.Device().id, cp.cuda.get_current_stream().ptr)
    else:
        where = ("numba", 0)
    return (name, np.dtype(dtype).str) + where


def scratch(dev, name, n, dtype):
    """A device array of at least n items of dtype, reused across calls."""
    key = _key(dev, name, dtype)
    buf = _CACHE.get(key)
    if buf is None or buf.size < n:
        cap = max(int(n), int(1.5 * buf.size) if buf is not None else 0, 1)
        buf = dev.empty(cap, dtype)
        _CACHE[key] = buf
    return buf[:n]


def clear():
    """Forget every cached buffer (tests; freeing device memory)."""
    _CACHE.clear()
