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


_MERGE = {"numpy": merge_sum_numpy, "cpu": cpu.merge_sum}


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
