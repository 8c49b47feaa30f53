"""`scatter_add(dst, idx, val)`: dst[idx] += val with repeated indices summed.

Index -1 is padding (the sparse collectives pad short messages with it) and is
skipped; any other index outside [0, len(dst)) is a ValueError raised before
dst is touched. On CUDA that check is a host read-back, so it runs only with
`kernels.set_checks(True)`; without it the kernel skips such an index (it
never writes outside dst) and nothing is read back. Repeated indices each add their value: on CPU in the order
they appear (the same order as np.add.at, so results match bit for bit); on
CUDA with atomic adds, whose order is unspecified (sums of repeated indices
can then differ in the last bit unless the additions are exact).
"""
import numpy as np

from . import common as D
from .cpu import scatter as cpu


def scatter_add_numpy(dst, idx, val):
    """Reference: np.add.at over the non-padding entries."""
    keep = idx != -1
    np.add.at(dst, idx[keep], val[keep])


def _scatter_cuda(dst, idx, val):
    from .cuda import scatter
    scatter.scatter_add(dst, idx, val)


_SCATTER = {"numpy": scatter_add_numpy, "cpu": cpu.scatter_add, "cuda": _scatter_cuda}


def _check_indices(idx, n, impl):
    """Out-of-range indices (other than -1) are an error, found before any write."""
    if impl == "cuda":
        from .cuda import scatter
        bad = scatter.first_bad(idx, n)
    elif impl == "numpy":
        wrong = np.flatnonzero((idx != -1) & ((idx < 0) | (idx >= n)))
        bad = int(wrong[0]) if wrong.size else -1
    else:
        bad = cpu.first_bad(np.ascontiguousarray(idx), n)
    if bad >= 0:
        raise ValueError(f"scatter_add: idx[{bad}] = {int(idx[bad])} is outside "
                         f"[0, {n}) and is not the padding marker -1")


def scatter_add(dst, idx, val, *, impl=None):
    """dst[idx] += val, in place, every occurrence of a repeated index adding.

    dst: 1-D float32/float64; idx: 1-D signed integers (-1 = padding, skipped);
    val: same length as idx, same dtype as dst. NumPy or CuPy arrays.
    """
    D.check_vector("dst", dst)
    D.check_vector("idx", idx, dtypes=(np.dtype(np.int32), np.dtype(np.int64)))
    D.check_vector("val", val, dtypes=(np.dtype(dst.dtype),))
    if idx.shape != val.shape:
        raise ValueError(f"idx {idx.shape} and val {val.shape} must have the same length")
    name = D.choose(impl, dst, idx, val)
    # the CUDA check is a read-back: debug mode only (the kernel skips bad indices)
    if name != "cuda" or D.checks():
        _check_indices(idx, dst.size, name)
    _SCATTER[name](dst, idx, val)
