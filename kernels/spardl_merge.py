"""Merge of sorted sparse selections: `merge_sum(ia, va, ib, vb)`.

    union of ia and ib (each ascending, indices unique within a list;
    leading -1 entries are padding and skipped), ascending, with
    sums[u] = (0 + va[u]) + vb[u]   (an absent term is not added)

in the dtype of va. This is the coalescing of two selections that the sparse
collectives (comm/spar_allgather.py) do at every Spar-All-Gather step; the
"cpu" version is one linear merge instead of a sort of the concatenation, and
gives the same bits as the NumPy reference (additions in the same order,
starting from zero, so a lone -0.0 becomes +0.0 in both).
"""
import numpy as np
from numba import njit



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


@njit(cache=True)
def _merge(ia, va, ib, vb, oi, ov):
    i = 0
    j = 0
    while i < ia.size and ia[i] < 0:
        i += 1
    while j < ib.size and ib[j] < 0:
        j += 1
    o = 0
    while i < ia.size and j < ib.size:
        a = ia[i]
        b = ib[j]
        if a < b:
            oi[o] = a
            ov[o] += va[i]
            i += 1
        elif b < a:
            oi[o] = b
            ov[o] += vb[j]
            j += 1
        else:
            oi[o] = a
            ov[o] += va[i]
            ov[o] += vb[j]
            i += 1
            j += 1
        o += 1
    while i < ia.size:
        oi[o] = ia[i]
        ov[o] += va[i]
        i += 1
        o += 1
    while j < ib.size:
        oi[o] = ib[j]
        ov[o] += vb[j]
        j += 1
        o += 1
    return o


def merge_sum_cpu(ia, va, ib, vb):
    idt = np.result_type(ia.dtype, ib.dtype)
    ia = np.ascontiguousarray(ia, idt)
    ib = np.ascontiguousarray(ib, idt)
    va = np.ascontiguousarray(va)
    vb = np.ascontiguousarray(vb, va.dtype)
    oi = np.empty(ia.size + ib.size, idt)
    ov = np.zeros(ia.size + ib.size, va.dtype)
    o = _merge(ia, va, ib, vb, oi, ov)
    return oi[:o], ov[:o]


_MERGE = {"numpy": merge_sum_numpy, "cpu": merge_sum_cpu}


def merge_sum(ia, va, ib, vb, *, impl=None):
    """Union of two sorted selections with summed values (module docstring).

    ia, ib: 1-D integer arrays, ascending, unique apart from leading -1s;
    va, vb: their values (float32/float64, va's dtype is the result's).
    Returns (idx, sums), idx ascending without -1. NumPy arrays only
    (impl "numpy" or "cpu"; default "cpu").
    """
    if ia.shape != va.shape or ib.shape != vb.shape or ia.ndim != 1:
        raise ValueError("merge_sum: idx and values must be 1-D and of equal length")
    if impl is None:
        impl = "cpu"
    if impl not in _MERGE:
        raise ValueError(f"merge_sum: impl must be one of {tuple(_MERGE)}, got {impl!r}")
    return _MERGE[impl](ia, va, ib, vb)
