"""Fused error feedback: `ef_select(grad, residual, k)`, and
`ef_select_blocks(grad, residual, n_blocks, k)` on equal blocks at once.

    acc = grad + residual
    idx, vals = topk_abs(acc, k)          (same tie rule: lower index first)
    residual[:] = acc; residual[idx] = 0  (in place; zero=False skips the zeroing)

The CPU kernel does it in one pass over grad and residual (read both, write
acc back into residual, flag candidates) plus work on ~1.2 k candidates and k
scattered zero stores; the CUDA kernel writes acc in the pass that builds the first digit's
histogram and zeroes the selected entries in its compaction pass.

If acc holds NaN or Inf, ValueError is raised and the step is lost (the
loss is non-finite; the run stops and its checkpoints are kept). residual
then holds grad + residual, except that on the CPU the candidates of the
first pass (entries at or above its sampled bound, about 1.2 k of them)
may already be zeroed: the CUDA kernels check before they zero anything.
"""
import numpy as np

from . import common as D
from .cpu.select import select_topk
from .topk import blocks_of, check_blocks, stack_rows, topk_abs_numpy


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


# ---------------------------------------------------------------- batched

def ef_select_blocks_numpy(grad, residual, n_blocks, k, zero=True):
    """Reference: ef_select_numpy on each block (residual's rows are views)."""
    g, r = blocks_of(grad, n_blocks), residual.reshape(n_blocks, -1)
    return stack_rows([ef_select_numpy(g[b], r[b], k, zero) for b in range(n_blocks)])


def _ef_blocks_cpu(grad, residual, n_blocks, k, zero=True):
    if not residual.flags.c_contiguous:
        raise ValueError("residual must be C-contiguous (it is updated in place)")
    g, r = blocks_of(grad, n_blocks), residual.reshape(n_blocks, -1)
    return stack_rows([select_topk(r[b], k, g=g[b], zero=zero) for b in range(n_blocks)])


def _ef_blocks_cuda(grad, residual, n_blocks, k, zero=True):
    from .cuda import select
    return select.ef_select_blocks(grad, residual, n_blocks, k, zero=zero)


_EF_BLOCKS = {"numpy": ef_select_blocks_numpy, "cpu": _ef_blocks_cpu, "cuda": _ef_blocks_cuda}


def ef_select_blocks(grad, residual, n_blocks, k, *, zero=True, impl=None):
    """ef_select of each of the n_blocks equal, consecutive blocks, at once.

    grad, residual: as for ef_select, of length m * n_blocks; 0 <= k <= m.
    Returns (idx, vals) of shape (n_blocks, k): row b is ef_select on block b,
    indices local to the block. One launch for all blocks on the GPU. On a
    NaN/Inf in some block's grad + residual, ValueError; residual is then
    left part way (the step is lost either way).
    """
    D.check_vector("grad", grad)
    D.check_vector("residual", residual)
    D.check_same("grad", grad, "residual", residual)
    if isinstance(residual, np.ndarray) and not residual.flags.writeable:
        raise ValueError("residual must be a writable array (updated in place)")
    n_blocks, m = check_blocks(n_blocks, residual.size)
    k = D.check_k(k, m)
    return D.dispatch(_EF_BLOCKS, impl, grad, residual)(grad, residual, n_blocks, k,
                                                        zero=bool(zero))
