"""Selection by magnitude: `topk_abs(x, k)`, `threshold_select(x, t)` and
`topk_abs_blocks(x, n_blocks, k)` (top-k of each of n equal blocks at once).

Both return indices in ascending order and the values at them, so every
implementation's answer compares exactly. The order is that of |x| (±0 are
equal), ties go to the lower index. NaN or Inf anywhere in x is a ValueError.

Implementations: "numpy" (reference: np.partition on the key), "cpu" (Numba:
sample-estimated bound, one collecting pass, exact radix select among the
candidates; see cpu/select.py), "cuda" (Numba CUDA radix select whose digit
walk stays on the device, + stable compaction; see cuda/select.py). The
batched form is a loop over blocks on the host and one launch on the device.
"""
import numbers

import numpy as np

from . import common as D
from .cpu.select import select_threshold, select_topk


def _keys(x):
    """|x| as ordered unsigned integers; raises on NaN/Inf."""
    keys = x.view(D.UINT[x.dtype]) & D.abs_mask(x.dtype)
    if keys.size and keys.max() >= D.inf_key(x.dtype):
        raise D.non_finite_error("input")
    return keys


# ---------------------------------------------------------------- NumPy reference

def topk_abs_numpy(x, k):
    """Reference: T = the k-th largest key; keep keys > T and the first ties."""
    x = np.ascontiguousarray(x)
    keys = _keys(x)
    n = x.size
    if k == 0:
        return np.empty(0, D.index_dtype(n)), np.empty(0, x.dtype)
    T = np.partition(keys, n - k)[n - k]
    above = np.flatnonzero(keys > T)
    ties = np.flatnonzero(keys == T)[:k - above.size]
    idx = np.sort(np.concatenate((above, ties))).astype(D.index_dtype(n))
    return idx, x[idx]


def blocks_of(x, n_blocks):
    """Rows of the (n_blocks, m) view of x (a copy only if x is strided)."""
    return np.ascontiguousarray(x).reshape(n_blocks, -1)


def stack_rows(results):
    """(idx, vals) of per-block results as (n_blocks, k) arrays."""
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])


def topk_abs_blocks_numpy(x, n_blocks, k):
    """Reference: topk_abs_numpy on each block."""
    rows = blocks_of(x, n_blocks)
    return stack_rows([topk_abs_numpy(row, k) for row in rows])


def threshold_select_numpy(x, t):
    """Reference: every |x| >= t, t rounded to x's dtype."""
    D.threshold_key(t, x.dtype)                 # validates t
    _keys(x)
    with np.errstate(over="ignore"):
        tt = x.dtype.type(t)
    idx = np.flatnonzero(np.abs(x) >= tt).astype(D.index_dtype(x.size))
    return idx, x[idx], idx.size


# ---------------------------------------------------------------- CPU and CUDA

def _topk_cpu(x, k):
    return select_topk(np.ascontiguousarray(x), k)


def _threshold_cpu(x, t):
    return select_threshold(np.ascontiguousarray(x), D.threshold_key(t, x.dtype))


def _topk_cuda(x, k):
    from .cuda import select
    return select.topk_abs(x, k)


def _topk_blocks_cpu(x, n_blocks, k):
    rows = blocks_of(x, n_blocks)
    return stack_rows([select_topk(row, k) for row in rows])


def _topk_blocks_cuda(x, n_blocks, k):
    from .cuda import select
    return select.topk_abs_blocks(x, n_blocks, k)


def _threshold_cuda(x, t):
    from .cuda import select
    return select.threshold_select(x, D.threshold_key(t, x.dtype))


_TOPK = {"numpy": topk_abs_numpy, "cpu": _topk_cpu, "cuda": _topk_cuda}
_TOPK_BLOCKS = {"numpy": topk_abs_blocks_numpy, "cpu": _topk_blocks_cpu,
                "cuda": _topk_blocks_cuda}
_THRESHOLD = {"numpy": threshold_select_numpy, "cpu": _threshold_cpu, "cuda": _threshold_cuda}


# ---------------------------------------------------------------- public API

def topk_abs(x, k, *, impl=None):
    """The k entries of largest magnitude.

    x: 1-D float32/float64 array (NumPy or CuPy); k: 0 <= k <= len(x).
    Returns (idx, vals): exactly k indices in ascending order (int32 when
    len(x) < 2**31, else int64) and x[idx]. Ties in |x| go to the lower index;
    +0 and -0 are equal. Raises ValueError if x holds NaN or Inf.
    impl: "numpy" | "cpu" | "cuda"; default by array type (CuPy -> "cuda").
    """
    D.check_vector("x", x)
    k = D.check_k(k, x.size)
    return D.dispatch(_TOPK, impl, x)(x, k)


def check_blocks(n_blocks, n):
    """n_blocks >= 1 divides n; returns (n_blocks, block length) as ints."""
    if isinstance(n_blocks, (bool, np.bool_)) or not isinstance(n_blocks, numbers.Integral):
        raise TypeError(f"n_blocks must be an integer, got {type(n_blocks).__name__}")
    n_blocks = int(n_blocks)
    if n_blocks < 1 or n % n_blocks:
        raise ValueError(f"n_blocks must be >= 1 and divide the length {n}, got {n_blocks}")
    return n_blocks, n // n_blocks


def topk_abs_blocks(x, n_blocks, k, *, impl=None):
    """topk_abs of each of the n_blocks equal, consecutive blocks of x.

    x: 1-D float32/float64 whose length m * n_blocks; 0 <= k <= m.
    Returns (idx, vals) of shape (n_blocks, k): row b is topk_abs(x[b*m:(b+1)*m], k),
    indices local to the block (int32 when m < 2**31), ascending, the same
    tie rule. One launch for all blocks on the GPU. Raises ValueError if x
    holds NaN or Inf.
    """
    D.check_vector("x", x)
    n_blocks, m = check_blocks(n_blocks, x.size)
    k = D.check_k(k, m)
    return D.dispatch(_TOPK_BLOCKS, impl, x)(x, n_blocks, k)


def threshold_select(x, t, *, impl=None):
    """Every entry with |x| >= t.

    t is a real number, rounded to x's dtype (t <= 0 selects everything).
    Returns (idx, vals, count): indices ascending (int32/int64 as topk_abs),
    x[idx], and count = len(idx). Raises ValueError on NaN/Inf in x or a NaN t.
    """
    D.check_vector("x", x)
    return D.dispatch(_THRESHOLD, impl, x)(x, t)
