"""`mix(x, other, w)`: in place x += w * (other - x) (gossip and PALSGD mixing).

Computed in x's dtype (w is rounded to it first) as two rounded operations,
d = other - x, then x + w*d, with no fused multiply-add: every implementation
then gives the same bits (the CUDA kernel uses explicitly rounded multiplies,
since the GPU compiler would otherwise contract them into an FMA).
"""
from . import common as D
from .cpu import mixing as cpu


def mix_numpy(x, other, w):
    x += w * (other - x)


def _mix_cuda(x, other, w):
    from .cuda import mixing
    mixing.mix(x, other, w)


_MIX = {"numpy": mix_numpy, "cpu": cpu.mix, "cuda": _mix_cuda}


def mix(x, other, w, *, impl=None):
    """x += w * (other - x), in place; x, other 1-D of one float dtype; w real."""
    D.check_vector("x", x)
    D.check_vector("other", other)
    D.check_same("x", x, "other", other)
    w = x.dtype.type(w)
    D.dispatch(_MIX, impl, x, other)(x, other, w)
