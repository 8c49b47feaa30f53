"""Fused error feedback: `ef_select(grad, residual, k)`.

    acc = grad + residual
    idx, vals = topk_abs(acc, k)          (same tie rule: lower index first)
    residual[:] = acc; residual[idx] = 0  (in place; zero=False skips the zeroing)

The CPU kernel does it in one pass over grad and residual (read both, write
acc back into residual, flag candidates) plus work on ~1.2 k candidates and k
scattered zero stores; the CUDA kernel writes acc in its first histogram pass
and zeroes the selected entries in its compaction pass.

If acc holds NaN or Inf, ValueError is raised; residual then already holds
grad + residual (the step is lost either way: the loss is non-finite).
"""
import numpy as np

from . import common as D
from .cpu.select import select_topk
from .topk import topk_abs_numpy


def ef_select_numpy(grad, residual, k, zero=True):
    """Reference: the three lines of the module docstring."""
    np.add(grad, residual, out=residual)
    idx, vals = topk_abs_numpy(residual, k)
    if zero:
        residual[idx] = 0
    return idx, vals


def _ef_cpu(grad, residual, k, zero=True):
    if not residual.flags.c_contiguous:
        raise ValueError("residual must be C-contiguous (it is updated in place)")
    return select_topk(residual, k, g=np.ascontiguousarray(grad), zero=zero)


def _ef_cuda(grad, residual, k, zero=True):
    from .cuda import select
    return select.ef_select(grad, residual, k, zero=zero)


_EF = {"numpy": ef_select_numpy, "cpu": _ef_cpu, "cuda": _ef_cuda}


def ef_select(grad, residual, k, *, zero=True, impl=None):
    """Top-k with error feedback, in one call.

    grad, residual: 1-D float32/float64 arrays of the same dtype and length;
    residual is overwritten with grad + residual, the selected entries zeroed
    (left as they are with zero=False: the caller zeroes what it needs).
    Returns (idx, vals) as topk_abs(grad + residual, k): idx ascending, vals
    the accumulated values. Raises ValueError on NaN/Inf in grad + residual.
    """
    D.check_vector("grad", grad)
    D.check_vector("residual", residual)
    D.check_same("grad", grad, "residual", residual)
    if isinstance(residual, np.ndarray) and not residual.flags.writeable:
        raise ValueError("residual must be a writable array (updated in place)")
    k = D.check_k(k, residual.size)
    return D.dispatch(_EF, impl, grad, residual)(grad, residual, k, zero=bool(zero))
