"""Merge of sorted sparse selections: `merge_sum(ia, va, ib, vb)`.

    union of ia and ib (each ascending, indices unique within a list;
    leading -1 entries are padding and skipped), ascending, with
    sums[u] = (0 + va[u]) + vb[u]   (an absent term is not added)

in the dtype of va. `coalesce(sels)` merges a list of such selections one
after another in list order (the Spar-All-Gather coalescing of
comm/spar_allgather.py). The "cpu" version is one linear merge instead of a
sort of the concatenation, the "cuda" version a merge-path merge on the
device (kernels/cuda/merge.py) that reads back only the final count, however
many selections; all give the same bits as the NumPy reference (additions in
the same order, starting from zero, so a lone -0.0 becomes +0.0 in all).
The inputs' order and uniqueness are trusted, not checked (a device check
would be a read-back).
"""
import numpy as np

from . import common as D
from .cpu import spardl as cpu


def merge_sum_numpy(ia, va, ib, vb):
    """Reference: np.unique of the concatenation, then the two adds in order."""
    cat = np.concatenate((ia, ib))
    union, inv = np.unique(cat, return_inverse=True)
    inv = inv.reshape(-1)
    sums = np.zeros(union.size, va.dtype)
    np.add.at(sums, inv[:ia.size], va)
    np.add.at(sums, inv[ia.size:], vb)
    keep = union != -1
    return union[keep], sums[keep]


def _merge_cuda(ia, va, ib, vb):
    from .cuda import merge
    return merge.merge_sum(ia, va, ib, vb)


def coalesce_numpy(sels):
    """Reference: merge_sum_numpy from an empty selection, in list order."""
    idx, val = sels[0][0][:0], sels[0][1][:0]
    for i, v in sels:
        idx, val = merge_sum_numpy(idx, val, i, v)
    return idx, val


def coalesce_cpu(sels):
    idx, val = sels[0][0][:0], sels[0][1][:0]
    for i, v in sels:
        idx, val = cpu.merge_sum(idx, val, i, v)
    return idx, val


def _coalesce_cuda(sels):
    from .cuda import merge
    return merge.coalesce(sels)


_MERGE = {"numpy": merge_sum_numpy, "cpu": cpu.merge_sum, "cuda": _merge_cuda}
_COALESCE = {"numpy": coalesce_numpy, "cpu": coalesce_cpu, "cuda": _coalesce_cuda}


def _check_pair(ia, va):
    if ia.ndim != 1 or ia.shape != va.shape:
        raise ValueError("merge_sum: idx and values must be 1-D and of equal length")


def merge_sum(ia, va, ib, vb, *, impl=None):
    """Union of two sorted selections with summed values (module docstring).

    ia, ib: 1-D integer arrays, ascending, unique apart from leading -1s;
    va, vb: their values (float32/float64, va's dtype is the result's).
    Returns (idx, sums), idx ascending without -1. NumPy or CuPy arrays
    (by array type, or impl = "numpy" | "cpu" | "cuda").
    """
    _check_pair(ia, va)
    _check_pair(ib, vb)
    return D.dispatch(_MERGE, impl, ia, va, ib, vb)(ia, va, ib, vb)


def coalesce(sels, *, impl=None):
    """Union of the selections [(idx, val), ...] with values summed in list
    order from zero: merge_sum applied one selection after another, each
    selection ascending and unique apart from leading -1s. Returns
    (idx, sums) in the first selection's value dtype; on the device one
    scalar (the count) is read back, however long the list.
    """
    if not sels:
        raise ValueError("coalesce: needs at least one selection")
    for i, v in sels:
        _check_pair(i, v)
    return D.dispatch(_COALESCE, impl, *[a for s in sels for a in s])(sels)
