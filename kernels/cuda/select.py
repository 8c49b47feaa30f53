"""Numba CUDA selection by magnitude: topk_abs, threshold_select, ef_select and
their batched forms over equal-size blocks (topk_abs_blocks, ef_select_blocks).

Keys are the float bits with the sign cleared (ordered like |x|), read
through an unsigned view of the data. Top-k is an MSD radix select with
11-bit digits whose histogram walk stays on the device: a kernel picks each
digit and keeps the state (boundary, counts) in device memory, so a call
launches a fixed sequence of kernels and reads back one small status array
(NaN/Inf flag, count) at the end: the only host read-back before the
results. The selection comes out in index order, ties to the lower index.

A call selects in S segments of m keys at once (S = 1 for the plain ops,
the number of blocks for the batched ones). Segments of up to SINGLE_MAX
keys take the single-block path (select_small.py: one launch, one CUDA
block per segment); longer ones the multi-block path (select_large.py:
first pass, candidate collection, digits over the candidates, counts,
write). threshold_select is the same kernels with the boundary fixed at the
threshold's key; its count is the status read-back.
"""
from collections import OrderedDict

import numpy as np
from numba import cuda

from . import select_large as L
from .select_device import DIGIT, NBINS
from .select_small import THRESH, TOPK, small_select
from .util import MAX_BLOCKS, THREADS, Device, blocks, is_cupy
from ..common import UINT, abs_mask, index_dtype, inf_key, non_finite_error

# segments of up to this many keys are selected by one CUDA block each
SINGLE_MAX = 1 << 16


class _Call:
    """The arrays and constants of one select call on S segments of m keys."""

    def __init__(self, dev, u, dtype, S, m):
        self.dev, self.u, self.dtype, self.S, self.m = dev, u, np.dtype(dtype), S, m
        self.udt = UINT[self.dtype]
        self.nbits = np.uint64(8 * self.dtype.itemsize - 1)
        self.amask = np.uint64(abs_mask(dtype))
        self.inf = np.uint64(inf_key(dtype))
        self.idt = index_dtype(m)
        self.status = dev.zeros(2, np.int64)        # [NaN/Inf seen, count]

    def outputs(self, size):
        """Device arrays for `size` results: (idx, vals, vals' bits view)."""
        idx = self.dev.empty(max(size, 1), self.idt)[:size]
        vals = self.dev.empty(max(size, 1), self.dtype)
        return idx, vals[:size], vals.view(self.udt)


def _read_back(dev, d):
    """The host copy of a small device array (status): the one read-back."""
    return dev.host(d)


def _dummy(dev, dtype):
    return dev.empty(1, dtype)


def _launch(dev, kernel, grid, *args):
    """kernel[grid, THREADS] on the call's stream. CuPy arrays go in as Numba
    views made without the stream synchronisation Numba does when it imports
    an array that names a stream: the launch is on that stream, so it is
    ordered after the array's producers anyway, and a sync per argument would
    make the host wait for the device at every launch."""
    if dev.cupy:
        args = [cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
                if is_cupy(a) else a for a in args]
    kernel[grid, THREADS, dev.stream](*args)


# ---------------------------------------------------------------- single block

def _small(c, k, mode, tkey, g, r, ef, zero):
    cap = c.S * k if mode == TOPK else c.m
    idx, vals, vbits = c.outputs(cap)
    _launch(c.dev, small_select, c.S, g, r, c.u, np.int64(c.m), ef, np.int64(mode), np.int64(k),
            np.uint64(tkey), c.nbits, c.amask, c.inf, idx, vbits, bool(zero), c.status)
    status = _read_back(c.dev, c.status)
    if mode == THRESH:
        idx, vals = idx[:int(status[1])], vals[:int(status[1])]
    return idx, vals, status


# ---------------------------------------------------------------- multi block

class _Work:
    """The multi-block path's temporaries for S segments of m keys."""

    def __init__(self, dev, S, m, idt, udt):
        nt = -(-m // L.TILE)
        self.bnd = dev.empty(2 * S, np.uint64).reshape(S, 2)
        self.cnt = dev.empty(3 * S, np.int64).reshape(S, 3)
        self.arrive = dev.empty(S, np.int32)
        self.hist = dev.empty(S * NBINS, np.int64).reshape(S, NBINS)
        self.cand_i, self.cand_u = dev.empty(S * nt * L.TILE, idt), dev.empty(S * nt * L.TILE, udt)
        self.tcnt, self.acnt, self.bcnt = (dev.empty(S * nt, np.int64) for _ in range(3))
        self.aoff = dev.empty(S * (nt + 1), np.int64).reshape(S, nt + 1)
        self.boff = dev.empty(S * (nt + 1), np.int64).reshape(S, nt + 1)


_WORK = OrderedDict()       # (array kind, stream, S, m, dtype) -> _Work, most recent last
WORK_ENTRIES = 8


def _workspace(c):
    """The temporaries for this call's shape, allocated once and reused: the
    kernels of one stream run in order, and each call rewrites what it reads
    (init sets the state, every tile's counts are written before they are
    read), so a later call on the same stream may take them over."""
    stream = c.dev.xp.cuda.get_current_stream().ptr if c.dev.cupy else 0
    key = (c.dev.cupy, stream, c.S, c.m, c.dtype)
    w = _WORK.pop(key, None) or _Work(c.dev, c.S, c.m, c.idt, c.udt)
    _WORK[key] = w
    while len(_WORK) > WORK_ENTRIES:
        _WORK.popitem(last=False)
    return w


def _init_state(c, w, k, mode, tkey):
    """Every segment's state, by a kernel: boundary [0, 2^nbits) and need k
    for top-k, [key(t), key(t)) resolved for a threshold; empty histograms."""
    if mode == TOPK:
        lims = (np.uint64(0), np.uint64(1 << int(c.nbits)), np.int64(k), np.int64(0))
    else:
        lims = (np.uint64(tkey), np.uint64(tkey), np.int64(0), np.int64(1))
    _launch(c.dev, L.init, blocks(c.S * NBINS), w.bnd, w.cnt, w.arrive, w.hist, *lims)


def _large(c, k, mode, tkey, g, r, ef, zero):
    dev, S, m = c.dev, c.S, c.m
    nt = -(-m // L.TILE)
    per_seg = -(-MAX_BLOCKS // S)               # about MAX_BLOCKS blocks in all
    grid = (min(nt, per_seg), S)
    w = _workspace(c)
    _init_state(c, w, k, mode, tkey)
    shift = int(c.nbits) - DIGIT
    topk = mode == TOPK
    if topk:                                    # 1. NaN check (+ sum), top digit
        _launch(dev, L.first, (min(blocks(m), per_seg), S), g, r, c.u, np.int64(m), ef,
                c.amask, c.inf, np.uint64(shift), np.int64(k), w.hist, w.bnd, w.cnt, w.arrive,
                c.status)
        if k == 0:
            return c.outputs(0)[:2] + (_read_back(dev, c.status),)
    # 2. candidates (key >= blo) per tile, next digit
    d = min(DIGIT, shift)
    shift -= d
    _launch(dev, L.collect, grid, c.u, np.int64(m), np.int64(nt), c.amask, not topk, c.inf,
            np.uint64(shift), np.uint64((1 << d) - 1), np.int64(k), w.cand_i, w.cand_u, w.tcnt,
            w.hist, w.bnd, w.cnt, w.arrive, c.status)
    # 3. the remaining digits over the candidates (kernels of resolved segments return)
    while topk and shift > 0:
        d = min(DIGIT, shift)
        shift -= d
        _launch(dev, L.cand_hist, grid, w.cand_u, w.tcnt, np.int64(nt), c.amask,
                np.uint64(shift), np.uint64((1 << d) - 1), np.int64(k), w.hist, w.bnd, w.cnt,
                w.arrive)
    # 4. counts per tile and their scan
    _launch(dev, L.counts, grid, w.cand_u, w.tcnt, np.int64(nt), c.amask, w.acnt, w.bcnt,
            w.aoff, w.boff, w.bnd, w.arrive, c.status)
    # 5. the ordered write; a threshold's count (read back here) sizes its output
    status = None if topk else _read_back(dev, c.status)
    size = S * k if topk else int(status[1])
    idx, vals, vbits = c.outputs(size)
    if size and (topk or not status[0]):
        _launch(dev, L.write, grid, w.cand_i, w.cand_u, w.tcnt, np.int64(nt), c.amask, w.aoff,
                w.boff, w.bnd, w.cnt, np.int64(k), idx, vbits, c.u, np.int64(m), bool(zero),
                c.status)
    if topk:
        status = _read_back(dev, c.status)
    return idx, vals, status


# ---------------------------------------------------------------- entry points

def _select(dev, u, dtype, S, m, k, mode=TOPK, tkey=0, g=None, r=None, zero=False):
    """(idx, vals, status) of a select over S segments of m keys u (ef: u is
    r's key view and g the gradient). The status is read back once."""
    c = _Call(dev, u, dtype, S, m)
    ef = g is not None
    if not ef:
        g = r = _dummy(dev, dtype)
    run = _small if m <= SINGLE_MAX else _large
    return run(c, k, mode, tkey, g, r, ef, zero)


def _keys_view(d, dtype):
    return d.view(UINT[np.dtype(dtype)])


def _empty_result(dev, n, dtype, shape=0):
    return dev.result(dev.empty(shape, index_dtype(n))), dev.result(dev.empty(shape, dtype))


def _topk(x, S, k):
    dev = Device(x)
    dtype = np.dtype(x.dtype)
    m = x.size // S
    if m == 0:
        return _empty_result(dev, m, dtype, (S, 0))
    idx, vals, status = _select(dev, _keys_view(dev.put(x), dtype), dtype, S, m, k)
    if status[0]:
        raise non_finite_error("input")
    return dev.result(idx).reshape(S, k), dev.result(vals).reshape(S, k)


def topk_abs(x, k):
    idx, vals = _topk(x, 1, k)
    return idx.reshape(-1), vals.reshape(-1)


def topk_abs_blocks(x, n_blocks, k):
    return _topk(x, n_blocks, k)


def threshold_select(x, tkey):
    dev = Device(x)
    dtype = np.dtype(x.dtype)
    if x.size == 0:
        return _empty_result(dev, 0, dtype) + (0,)
    u = _keys_view(dev.put(x), dtype)
    idx, vals, status = _select(dev, u, dtype, 1, x.size, 0, THRESH, int(tkey))
    if status[0]:
        raise non_finite_error("input")
    return dev.result(idx), dev.result(vals), int(status[1])


def _ef(grad, residual, S, k, zero):
    dev = Device(grad, residual)
    dtype = np.dtype(residual.dtype)
    m = residual.size // S
    if m == 0:
        return _empty_result(dev, m, dtype, (S, 0))
    g, r = dev.put(grad), dev.put(residual)
    idx, vals, status = _select(dev, _keys_view(r, dtype), dtype, S, m, k, g=g, r=r,
                                zero=zero)
    dev.write_back(r, residual)
    if status[0]:
        raise non_finite_error("grad + residual")
    return dev.result(idx).reshape(S, k), dev.result(vals).reshape(S, k)


def ef_select(grad, residual, k, zero=True):
    idx, vals = _ef(grad, residual, 1, k, zero)
    return idx.reshape(-1), vals.reshape(-1)


def ef_select_blocks(grad, residual, n_blocks, k, zero=True):
    return _ef(grad, residual, n_blocks, k, zero)
