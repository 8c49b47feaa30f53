"""`momentum_step`: SGD with heavy-ball or Nesterov momentum on flat buffers,
in place.

    d = g + wd·x ;  v = mu·v + d ;  v = 0 where |v| < tiny
    x -= lr·(d + mu·v)   (Nesterov)   or   x -= lr·v

Every operation is rounded in x's dtype (the scalars are rounded to it
first), with no fused multiply-add, so every implementation gives the same
bits; the CPU kernel does it in one pass over the buffers where the NumPy
reference makes several.

Momentum entries smaller in magnitude than the dtype's smallest normal
number (`tiny`: 1.2e-38 in float32) are set to zero (keeping their sign).
An entry whose gradient stays zero, as for a unit that never activates,
otherwise decays geometrically into the subnormal range, where x86
arithmetic on it is many times slower: on the quickstart MLP the update
slowed a whole step by two thirds after 2,000 steps. The flush changes an
entry by less than `tiny`, so x moves by at most lr·tiny.
"""
import numpy as np

from . import common as D
from .cpu import optim as cpu


def momentum_step_numpy(x, g, v, lr, mu, wd, nesterov, tiny, work):
    """The reference, written with array methods only: it also runs on CuPy."""
    d = g
    if wd != 0:
        d = work
        d[...] = x
        d *= wd
        d += g
    v *= mu
    v += d
    v *= abs(v) >= tiny
    if nesterov:
        if d is not work:
            work[...] = d
            d = work
        d += mu * v
    else:
        d = v
    x -= lr * d


def _cpu(x, g, v, lr, mu, wd, nesterov, tiny, work):
    for name, a in (("x", x), ("v", v)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
    cpu.momentum_step(x, np.ascontiguousarray(g), v, lr, mu, wd, bool(nesterov), tiny)


_STEP = {"numpy": momentum_step_numpy, "cpu": _cpu, "cuda": momentum_step_numpy}


def momentum_step(x, g, v, lr, mu, *, wd=0.0, nesterov=False, work=None, impl=None):
    """One SGD step with momentum, in place on x (parameters) and v (momentum);
    g is the gradient. `work`, a buffer like x, is needed by the NumPy and GPU
    paths when wd != 0 or nesterov (the CPU kernel needs none)."""
    for name, a in (("x", x), ("g", g), ("v", v)):
        D.check_vector(name, a)
    D.check_same("x", x, "g", g)
    D.check_same("x", x, "v", v)
    f = x.dtype.type
    tiny = f(np.finfo(x.dtype).tiny)
    fn = D.dispatch(_STEP, impl, x, g, v)
    if fn is not _cpu and (wd != 0 or nesterov):
        if work is None:
            raise ValueError("momentum_step needs `work` (a buffer like x) for wd or nesterov")
        D.check_same("x", x, "work", work)
    fn(x, g, v, f(lr), f(mu), f(wd), bool(nesterov), tiny, work)
