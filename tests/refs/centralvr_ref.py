"""Plain serial float64 simulation of docs/algorithms/variance-reduction.md (CentralVR-Sync,
and the SAGA / SVRG reconstructions) over P shards, written from the rules with
its own model derivatives, for the tests to compare against.

Linear models only: x = [W (d or d*C), b (1 or C)], data loss ℓ(z, y) with
z = X W + b; a sample's data gradient is [X_iᵀ D_i, D_i] with D_i = dℓ/dz.
"""
import numpy as np

from mpidsgd.algorithms.vrbase import DRAW
from mpidsgd.data.shard import SHUFFLE


def derivs(model, x, X, y, C=None):
    """dℓ/dz per sample at x."""
    d = X.shape[1]
    if model == "softmax":
        W, b = x[:d * C].reshape(d, C), x[d * C:]
        z = X @ W + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y.astype(int)] -= 1.0
        return p
    z = X @ x[:d] + x[d]
    if model == "ridge":
        return z - y
    return 1.0 / (1.0 + np.exp(-z)) - y


def grad_sum(X, D):
    """Σ_i data gradient of the rows, from their derivatives."""
    if D.ndim == 1:
        return np.concatenate([X.T @ D, [D.sum()]])
    return np.concatenate([(X.T @ D).ravel(), D.sum(axis=0)])


def full_grad(model, x, Xs, ys, l2, C=None):
    N = sum(len(X) for X in Xs)
    g = sum(grad_sum(X, derivs(model, x, X, y, C)) for X, y in zip(Xs, ys)) / N
    return g + l2 * x


def batch_ids(sampling, seed, epoch, rank, n, B, steps):
    """The sample ids of every step of one local epoch, in the documented data order."""
    perm = np.random.default_rng([seed, SHUFFLE, epoch, rank]).permutation(n)
    for s in range(steps):
        if sampling == "replacement":
            yield np.random.default_rng([seed, DRAW, epoch, s, rank, 1]).integers(0, n, size=B)
        else:
            yield perm[s * B:(s + 1) * B]


def simulate(method, Xs, ys, x0, *, model, lr, l2, B, steps, epochs, seed,
             sampling="permutation", C=None):
    """Per epoch: dict(x, gbar, T) after the epoch's exchange (sync; P = 1 is single)."""
    P = len(Xs)
    n = [len(X) for X in Xs]
    N = sum(n)
    w = [nk / N for nk in n]
    T = [np.zeros((nk,) if C is None else (nk, C)) for nk in n]
    x, gbar = x0.astype(np.float64).copy(), np.zeros(x0.size)
    out = []
    for e in range(epochs):
        if method == "svrg":
            snap = [derivs(model, x, Xs[r], ys[r], C) for r in range(P)]
            mu = sum(grad_sum(Xs[r], snap[r]) for r in range(P)) / N
        xk, gk = [], []
        for r in range(P):
            xr, a = x.copy(), gbar.copy()
            for ids in batch_ids(sampling, seed, e, r, n[r], B, steps):
                Xb, yb = Xs[r][ids], ys[r][ids]
                D = derivs(model, xr, Xb, yb, C)
                if method == "svrg":
                    v = grad_sum(Xb, D - snap[r][ids]) / B + mu
                elif e == 0:                      # fill epoch: plain SGD
                    v = grad_sum(Xb, D) / B
                elif method == "centralvr":       # frozen average of the last epoch
                    v = grad_sum(Xb, D - T[r][ids]) / B + gbar
                else:                             # saga: running mean
                    v = grad_sum(Xb, D - T[r][ids]) / B + a
                v = v + l2 * xr
                xr = xr - lr * v
                if method == "saga" and e > 0:
                    u, first = np.unique(ids, return_index=True)
                    a = a + grad_sum(Xb[first], D[first] - T[r][u]) / n[r]
                if method != "svrg":
                    T[r][ids] = D
            xk.append(xr)
            gk.append(grad_sum(Xs[r], T[r]) / n[r])
        x = sum(w[r] * xk[r] for r in range(P))
        if method != "svrg":
            gbar = sum(w[r] * gk[r] for r in range(P))
        out.append({"x": x.copy(), "gbar": gbar.copy(), "T": [t.copy() for t in T]})
    return out
