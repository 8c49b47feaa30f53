"""Hand-written kernels (NumPy reference, Numba CPU, Numba CUDA); imported as
mpidsgd.kernels.

Every op dispatches by array type (NumPy -> Numba CPU, CuPy -> Numba CUDA) and
takes `impl="numpy" | "cpu" | "cuda"` to choose explicitly; "cuda" with NumPy
arrays copies to the device and back, which is how the tests run the CUDA
kernels in the simulator (NUMBA_ENABLE_CUDASIM=1). Importing this package is
cheap: numba.cuda and cupy are imported on first CUDA use, and compiled CPU
code is cached on disk (cache=True) so concurrent ranks reuse it.

Layout: one public module per op family at this level (its NumPy reference,
argument checks and dispatch table), the Numba CPU code beneath in cpu/ and
the Numba CUDA code in cuda/; common.py holds the dispatch and the checks
that all of them share. cpu/ and cuda/ import only common.py, never an op
module, so there is no import loop.

    topk_abs(x, k)                  -> (idx, vals)   k largest |x|, idx ascending
    threshold_select(x, t)          -> (idx, vals, count)   all |x| >= t
    ef_select(grad, residual, k)    -> (idx, vals)   error feedback, in place
    topk_abs_blocks(x, nb, k), ef_select_blocks(grad, residual, nb, k)
                                    -> (nb, k) arrays: the same on nb equal blocks at once
    scatter_add(dst, idx, val)      dst[idx] += val (duplicates add; -1 skipped)
    pack(idx, val) -> buf, unpack(buf, k, dtype) -> (idx, val), packed_nbytes
    mix(x, other, w)                x += w * (other - x), in place
    momentum_step(x, g, v, lr, mu)  SGD with momentum in place, one pass (wd, nesterov)
    merge_sum(ia, va, ib, vb)       -> (idx, sums)  union of two sorted selections
    coalesce([(idx, val), ...])     -> (idx, sums)  merge_sum over many, in list order
    restore_outside(dst, idx, old, keep)   dst[idx] = old except at keep (SparDL residual)
    densify_blocks(out, idx, val, c, d)    out <- sparse blocks of c, / d, zeros elsewhere
    set_checks(on), checks()        validate device inputs by a host read-back (debug)
"""
from .common import IMPLS, checks, set_checks
from .ef import ef_select, ef_select_blocks
from .mixing import mix
from .optim import momentum_step
from .packing import pack, packed_nbytes, unpack
from .scatter import scatter_add
from .spardl_merge import coalesce, merge_sum
from .spardl_residual import densify_blocks, restore_outside
from .topk import threshold_select, topk_abs, topk_abs_blocks

__all__ = ["IMPLS", "checks", "coalesce", "densify_blocks", "ef_select", "ef_select_blocks",
           "merge_sum", "mix", "momentum_step", "pack", "packed_nbytes", "restore_outside",
           "scatter_add",
           "set_checks", "threshold_select", "topk_abs", "topk_abs_blocks", "unpack"]
