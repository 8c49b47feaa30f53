"""Serial event simulation of a parameter server and M asynchronous workers.

Reference for the asynchrony-as-momentum result (Mitliagkas, Zhang, Hadjis,
Re, "Asynchrony begets Momentum", 2016). Each worker reads (w, version),
spends a random compute time, and sends the gradient of the quadratic
f(w) = 1/2 w'Aw at what it read; the server applies it at once
(w += mu_L v - alpha g style update with v the server's momentum), bumps the
version and records the staleness tau = version_now - version_read. The
worker reads again immediately. Communication takes no time.

All seeds run side by side (NumPy arrays of shape (seeds, M, ...)), so
thousands of trajectories cost well under a second.

Compute-time laws (`law`):
  exponential  Exp(mean): the staleness is Geometric(1/M) on {0, 1, ...}
  shifted      a fixed part `fixed` * mean plus Exp((1 - fixed) * mean):
               the same mean, but no longer memoryless
  fixed        every gradient takes exactly `mean` (round robin, tau = M - 1)
  sync         the server answers the worker whose read is current: a
               synchronous server (tau = 0 always), the negative control
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SimResult:
    """w: (seeds, steps + 1, d) iterates; tau: (seeds, steps) staleness."""

    w: np.ndarray
    tau: np.ndarray


def _draw(rng, law, shape, mean, fixed):
    # one compute time per entry of `shape`
    if law == "exponential":
        return rng.exponential(mean, shape)
    if law == "shifted":
        return fixed * mean + rng.exponential((1.0 - fixed) * mean, shape)
    if law in ("fixed", "sync"):
        return np.full(shape, float(mean))
    raise ValueError(f"unknown law {law!r}")


def simulate(A, w0, *, M, steps, seeds, alpha, mu_l=0.0, law="exponential",
             mean=1.0, fixed=0.0, seed=0) -> SimResult:
    """Run `steps` server updates for each of `seeds` independent runs."""
    A = np.asarray(A, dtype=np.float64)
    d = A.shape[0]
    rng = np.random.default_rng(seed)
    S, idx = seeds, np.arange(seeds)
    w = np.zeros((S, steps + 1, d))
    w[:, 0] = w0
    v = np.zeros((S, d))
    tau = np.zeros((S, steps), dtype=np.int64)
    # every worker reads version 0 at time 0
    finish = _draw(rng, law, (S, M), mean, fixed)
    if law in ("fixed", "sync"):
        # equal times: start offsets that only break ties (round robin)
        finish += 1e-9 * np.arange(M)
    read_ver = np.zeros((S, M), dtype=np.int64)
    for t in range(steps):
        # the next gradient to arrive at the server
        k = np.argmin(finish, axis=1)
        if law == "sync":
            read_ver[idx, k] = t
        ver = read_ver[idx, k]
        g = w[idx, ver] @ A.T
        # server: momentum update, version bump, staleness record
        v = mu_l * v - alpha * g
        w[:, t + 1] = w[:, t] + v
        tau[:, t] = t - ver
        # the worker reads (w, t + 1) and starts its next gradient
        read_ver[idx, k] = t + 1
        finish[idx, k] += _draw(rng, law, S, mean, fixed)
    return SimResult(w=w, tau=tau)


def staleness_law(tau, burn_in=0, kmax=3) -> np.ndarray:
    """Empirical P(tau = k) for k < kmax, after `burn_in` updates."""
    t = tau[:, burn_in:].ravel()
    return np.array([np.mean(t == k) for k in range(kmax)])


def fit_momentum(A, w, burn_in=0, end=None):
    """Least squares of E[dw_{t+1}] = mu E[dw_t] - c E[grad f(w_t)].

    The expectations are means over seeds at each t; the regression runs over
    t and the coordinates. Returns (mu_hat, c_hat)."""
    m = w.mean(axis=0)                       # E[w_t], (steps + 1, d)
    dw = np.diff(m, axis=0)                  # E[w_{t+1} - w_t]
    grad = m @ np.asarray(A).T               # E grad f(w_t): f is quadratic
    end = len(dw) if end is None else end
    t = np.arange(max(burn_in, 1), end)
    y = dw[t].ravel()
    X = np.stack([dw[t - 1].ravel(), -grad[t].ravel()], axis=1)
    (mu, c), *_ = np.linalg.lstsq(X, y, rcond=None)
    return float(mu), float(c)
