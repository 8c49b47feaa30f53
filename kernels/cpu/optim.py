"""Numba CPU SGD update with momentum: one pass, each operation rounded in the
buffer's dtype, no FMA, momentum flushed to zero below the smallest normal."""
from numba import njit


@njit(cache=True)
def momentum_step(x, g, v, lr, mu, wd, nesterov, tiny):
    for i in range(x.size):
        d = g[i]
        if wd != 0:
            d = x[i] * wd + d
        b = mu * v[i]
        b = b + d
        if abs(b) < tiny:
            b = b * (tiny - tiny)    # a zero of b's dtype and sign (b * 0 would be float64)
        v[i] = b
        if nesterov:
            b = mu * b
            b = d + b
        x[i] = x[i] - lr * b
