"""SVRG baseline (reconstruction, ours), distributed by iterate averaging.

Per round (= one local epoch):
    x̃ = x (the consensus);  μ = ∇f(x̃) over every shard (one allreduce of d)
    local epoch:  x -= lr (∇f_i(x) - ∇f_i(x̃) + μ)     (data terms; + l2 x exactly)
    x = Σ_k w_k x_k                                   (one allreduce of d)

The full-gradient pass counts as n_k gradient evaluations per rank.
algo.snapshot says where an inner step gets ∇f_i(x̃):
  stored     linear models keep dℓ/dz of every sample at x̃ from the full pass
             (n numbers per rank): an inner step costs 1 gradient, a round 2
             per sample.
  recompute  ∇f_i(x̃) is computed again at every inner step (Johnson & Zhang's
             SVRG; the only form for other models): 2 per inner step, a round
             3 per sample. Both counted in grad_evals_per_sample.
  auto       stored for per-sample tables (linear models), else recompute.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, doc
from .base import register
from .vrbase import VROptions, VRBase, table_kind


@dataclass
class SVRGOptions(VROptions):
    snapshot: str = doc("auto", "svrg: where an inner step gets the snapshot gradient: stored (linear models: "
                                "dℓ/dz of the full pass, 1 evaluation per step) | recompute (∇f_i(x̃) again "
                                "at each step, 2 per step, as in Johnson & Zhang) | auto (stored for "
                                "per-sample tables)")

    def validate(self, cfg, world_size=None):
        super().validate(cfg, world_size)
        if self.snapshot not in ("auto", "stored", "recompute"):
            raise ConfigError(f"algo.snapshot must be auto, stored or recompute, got {self.snapshot!r}")
        if self.snapshot == "stored" and table_kind(cfg) != "samples":
            raise ConfigError("algo.snapshot = stored needs per-sample tables (a linear model, "
                              "algo.table = samples or auto); use recompute")


@register
class SVRG(VRBase):
    name = "svrg"
    Options = SVRGOptions
    uses_table = False

    def __init__(self, *args):
        super().__init__(*args)
        snap = self.opts.snapshot
        self.stored = snap == "stored" or (snap == "auto" and self.kind == "samples")
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
        if self.stored:
            self.model.grad_from_derivs(X, E - self.tab.T[ids], v)
        elif self.kind == "samples":
            _, Es = self.evaluate(self.xs, X, y)      # counted: a second gradient
            self.model.grad_from_derivs(X, E - Es, v)
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
