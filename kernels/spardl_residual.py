"""The sparse ends of a SparDL step, without dense temporaries.

`restore_outside(dst, idx, old, keep)`: dst[idx[i]] = old[i] for every i
whose idx[i] is not in `keep` (ascending, unique); with inside=True, for
every i whose idx[i] IS in keep (a selection that was not zeroed when it
was taken is zeroed where it stayed on the final support). Global residual
collection puts back the logged values of every change a step made to the
residual, in reverse order, except on the final support `keep`, where the
rank keeps what it held. The CPU kernel merges idx with keep (both
ascending, the usual case: O(len(idx) + len(keep)); no gather of the held
values, no full-length mask); an idx that is not ascending falls back to a
binary search in keep for the rest of the list. Its checks run in the same
kernel (a step makes some 15 calls: NumPy checks would cost as much as
the restore).

`densify_blocks(out, idx, val, c, divisor)`: out <- 0, then
out[b*c + idx[b, j]] += val[b, j] / divisor for every entry with
idx[b, j] != -1 (padding) and b*c + idx[b, j] < len(out): the dense result
of a sparse all-gather of B blocks of c, divided by the number of ranks.
The CPU kernel writes out once, in order (zeros up to each entry, then the
entry), when each row's indices ascend; out of order entries are added where
they fall. Each value is added to 0 (as a scatter-add into zeros does: a
lone -0.0 becomes +0.0), so every implementation gives the same bits as the
NumPy reference when the indices of a row are unique.
"""
import numpy as np

from . import common as D
from .cpu import spardl as cpu

INDEX = (np.dtype(np.int32), np.dtype(np.int64))


# ---------------------------------------------------------------- restore_outside

def restore_outside_numpy(dst, idx, old, keep, inside=False):
    """Reference: a membership mask, then a fancy assignment."""
    _check_restore(dst.size, idx, keep)
    put = np.isin(idx, keep) == inside
    dst[idx[put]] = old[put]


def _check_restore(n, idx, keep):
    """keep ascending and unique, idx inside [0, n) (NumPy or CuPy). On the
    GPU both checks are one device expression and one read-back: every read-
    back waits for the device, and SparDL calls this a dozen times a step."""
    bad_keep = (keep[1:] <= keep[:-1]).any() if keep.size > 1 else False
    bad_idx = ((idx.min() < 0) | (idx.max() >= n)) if idx.size else False
    if not bool(bad_keep | bad_idx):
        return
    if bool(bad_keep):
        raise ValueError("keep must be ascending and unique")
    raise ValueError(f"restore_outside: idx outside [0, {n})")


def _restore_cpu(dst, idx, old, keep, inside=False):
    if cpu.restore_outside(dst, idx, old, keep, inside):
        _check_restore(dst.size, idx, keep)     # raises the message


def _restore_cuda(dst, idx, old, keep, inside=False):
    from .cuda import spardl
    _check_restore(dst.size, idx, keep)
    spardl.restore_outside(dst, idx, old, keep, inside)


_RESTORE = {"numpy": restore_outside_numpy, "cpu": _restore_cpu, "cuda": _restore_cuda}


def restore_outside(dst, idx, old, keep, *, inside=False, impl=None):
    """dst[idx] = old, except at the indices listed in `keep` (only at them
    with inside=True).

    dst: 1-D float32/float64, updated in place; idx: 1-D int32/int64 indices
    into dst, unique; old: their values (dst's dtype); keep: 1-D int32/int64,
    ascending and unique (checked). NumPy or CuPy arrays.
    """
    D.check_vector("dst", dst)
    D.check_vector("idx", idx, dtypes=INDEX)
    D.check_vector("old", old, dtypes=(np.dtype(dst.dtype),))
    D.check_vector("keep", keep, dtypes=INDEX)
    if idx.shape != old.shape:
        raise ValueError(f"idx {idx.shape} and old {old.shape} must have the same length")
    D.dispatch(_RESTORE, impl, dst, idx, old, keep)(dst, idx, old, keep, bool(inside))


# ---------------------------------------------------------------- densify_blocks

def densify_blocks_numpy(out, idx, val, c, divisor):
    """Reference: zero, global indices, np.add.at of val / divisor."""
    _check_densify(idx, c)
    out[...] = 0
    base = (np.arange(idx.shape[0], dtype=np.int64) * c)[:, None]
    g = (idx + base).reshape(-1)
    keep = (idx.reshape(-1) != -1) & (g < out.size)
    np.add.at(out, g[keep], val.reshape(-1)[keep] / val.dtype.type(divisor))


def _check_densify(idx, c):
    if idx.size and bool((idx.min() < -1) | (idx.max() >= c)):
        raise ValueError(f"densify_blocks: indices must be in [0, {c}) or -1")


def _densify_cpu(out, idx, val, c, divisor):
    if cpu.densify_blocks(out, idx, val, c, divisor):
        _check_densify(idx, c)                  # raises the message


def _densify_cuda(out, idx, val, c, divisor):
    from .cuda import spardl
    _check_densify(idx, c)
    spardl.densify_blocks(out, idx, val, c, divisor)


_DENSIFY = {"numpy": densify_blocks_numpy, "cpu": _densify_cpu, "cuda": _densify_cuda}


def densify_blocks(out, idx, val, c, divisor, *, impl=None):
    """out <- the dense vector of B sparse blocks of length c, divided by
    `divisor` (module docstring).

    out: 1-D float32/float64 of length <= B*c, overwritten; idx: (B, m)
    int32/int64 block-local indices in [0, c) or -1 (padding); val: (B, m),
    out's dtype. Entries past len(out) (the padding of the last block) are
    skipped. Indices unique per row for bit-identical results across impls.
    """
    D.check_vector("out", out)
    if idx.ndim != 2 or idx.shape != val.shape:
        raise ValueError(f"idx {idx.shape} and val {val.shape} must be 2-D of one shape")
    if np.dtype(idx.dtype) not in INDEX or val.dtype != out.dtype:
        raise TypeError("idx must be int32/int64 and val of out's dtype")
    c = int(c)
    if out.size > idx.shape[0] * c:
        raise ValueError(f"out has {out.size} > {idx.shape[0]} x {c} elements")
    D.dispatch(_DENSIFY, impl, out, idx, val)(out, idx, val, c, divisor)
