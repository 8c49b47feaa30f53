"""SVRG baseline (reconstruction, ours), distributed by iterate averaging.

Per round (= one local epoch):
    x̃ = x (the consensus);  μ = ∇f(x̃) over every shard (one allreduce of d)
    local epoch:  x -= lr (∇f_i(x) - ∇f_i(x̃) + μ)     (data terms; + l2 x exactly)
    x = Σ_k w_k x_k                                   (one allreduce of d)

The full-gradient pass counts as n_k gradient evaluations per rank. Linear
models keep dℓ/dz of every sample at x̃ from that pass (n numbers per rank), so
an inner step costs one gradient; other models recompute ∇f_i(x̃) (two).
"""
from __future__ import annotations

from .base import register
from .vrbase import VRBase


@register
class SVRG(VRBase):
    name = "svrg"
    uses_table = False

    def __init__(self, *args):
        super().__init__(*args)
        xp = self.xp
        self.xs, self.mu, self.mu_data = (xp.zeros_like(self.params) for _ in range(3))

    def begin_epoch(self, shard):
        """Snapshot x̃ = x and its full gradient μ (collective)."""
        self.xs[...] = self.params
        keep = self.tab.T if self.tab is not None else None
        self.local_grad_sum(self.xs, self.mu_data, keep=keep)
        self.samples += self.n_k
        self.channel.Allreduce(self.mu_data)
        self.mu_data /= self.N
        self.mu[...] = self.mu_data
        if self.l2:
            self.mu += self.l2 * self.xs

    def update(self, X, y, ids):
        v, x = self.v, self.params
        loss, E = self.evaluate(x, X, y)
        if self.kind == "samples":
            self.model.grad_from_derivs(X, E - self.tab.T[ids], v)
        else:
            _, Es = self.evaluate(self.xs, X, y)
            self.xp.subtract(E, Es, out=v)
        v += self.mu_data
        if self.l2:
            v += self.l2 * x
        x -= self.lr() * v
        return loss

    def end_epoch(self, shard, last):
        """x = Σ_k w_k x_k: one allreduce of d numbers."""
        if self.mode == "single":
            return
        d = self.params.size
        self.xp.multiply(self.params, self.w, out=self.buf[:d])
        self.channel.Allreduce(self.buf[:d])
        self.params[...] = self.buf[:d]

    def extra_state(self):
        return {"xs": self.xs, "mu": self.mu, "mu_data": self.mu_data}, {}

    def load_extra_state(self, shared, local):
        for key in ("xs", "mu", "mu_data"):
            getattr(self, key)[...] = self.xp.asarray(shared[key])
