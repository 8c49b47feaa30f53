"""The exact full gradient of the variance-reduced methods: svrg's snapshot
gradient and the relative full-gradient norm ||∇f(x)|| / ||∇f(x0)|| they report
(collective, phase `metrics`, not counted as gradient evaluations), plus, for a
model with a closed-form optimum (ridge), f(x) as a quadratic form and f*.

f(x) = (1/N) Σ_i ℓ_i(x) + (l2/2)||x||² over every rank's shard.
"""
from __future__ import annotations

import numpy as np


class ExactGradient:
    """Mixin of VRBase; uses its `model`, `shard`, `n_k`, `N`, `l2`, `kind`
    (samples | blocks), `channel`, `backend`, `xp`, `params`, `g0`, `epoch`,
    `samples` and `history`."""

    def local_grad_sum(self, x, out, with_l2=False, keep=None):
        """out = Σ over this shard of ∇(data loss)_i at x (+ n_k·l2·x); `keep`
        receives the per-sample dℓ/dz (linear models)."""
        out[...] = 0
        if self.n_k == 0:
            return out
        tmp = self.xp.empty_like(out)
        for Xb, yb, idx in self.shard.iter_batches(4096):
            m = int(Xb.shape[0])
            if self.kind == "samples":
                _, D = self.model.loss_and_derivs(x, Xb, yb)
                if keep is not None:
                    keep[idx[0]:idx[-1] + 1] = D
                self.model.grad_from_derivs(Xb, D, tmp, scale=m)
            else:
                self.model.loss_grad(x, Xb, yb, tmp)
                if self.l2:
                    tmp -= self.l2 * x
                tmp *= m
            out += tmp
        if with_l2 and self.l2:
            out += (self.n_k * self.l2) * x
        return out

    def full_grad(self, x, out, keep=None):
        """out = ∇f(x) over every rank's shard (collective)."""
        self.local_grad_sum(x, out, keep=keep)
        self.channel.Allreduce(out)
        out /= self.N
        if self.l2:
            out += self.l2 * x
        return out

    def full_grad_norm(self, x) -> float:
        g = self.xp.zeros_like(x)
        with self.channel.phase("metrics"):
            self.full_grad(x, g)
        return float(self.xp.linalg.norm(g.astype(np.float64)))

    def quadratic_objective(self):
        """A model with a closed-form optimum (ridge): f(x) as a quadratic form
        from one allreduce of [AᵀA, Aᵀy, yᵀy] (A = [X, 1]), and f* from the
        closed form (AᵀA/N + l2 I) x* = Aᵀy/N. None for other models or more
        than 2048 parameters."""
        m = self.params.size
        if not self.model.closed_form_optimum or m > 2048:
            return None
        buf = np.zeros(m * m + m + 1)
        if self.n_k:
            host = self.backend.asnumpy
            AA, Ay, yy = self.model.quadratic_terms(host(self.shard.X), host(self.shard.y))
            buf[:m * m] = AA.ravel()
            buf[m * m:m * m + m] = Ay
            buf[-1] = yy
        with self.channel.phase("metrics"):
            self.channel.Allreduce(buf)
        M, r, yy, N, l2 = buf[:m * m].reshape(m, m), buf[m * m:-1], buf[-1], self.N, self.l2

        def f(x):
            x = np.asarray(x, np.float64)
            return float((x @ M @ x - 2 * r @ x + yy) / (2 * N) + 0.5 * l2 * (x @ x))
        f.star = f(np.linalg.solve(M / N + l2 * np.eye(m), r / N))
        return f

    def record_metric(self) -> float:
        rel = self.full_grad_norm(self.params) / self.g0
        self.history.append([self.epoch, self.samples, rel])
        return rel
