"""`topka`: synchronous SGD whose gradient allreduce is TopkA (every rank's
exact top-k of gradient + residual, all-gathered and summed) with error
feedback; a baseline for `spardl` (docs/algorithms/sparse.md).

Per step: g = local mean gradient; the sparse allreduce returns the average
of all ranks' selections (identical on all ranks) and leaves each rank's
unselected g + e in its residual; momentum and weight decay are applied
densely to that result, identically everywhere, so parameters stay
bit-identical across ranks. The first `warmup_dense_steps` steps use the
dense allreduce instead (residuals untouched).

`TopkA` is also the base of the other sparse allreduces with error feedback
(`gtopk`, `spardl`): they share its step, dense warm-up, optimizer and
checkpoint layout, and override only `init_sparse`, `sparse_allreduce` and,
where their per-rank state differs, `local_state` / `load_local_state` /
`reset_local_state`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..comm.dense import allreduce_mean
from ..comm.topka import topka
from ..config import ConfigError, doc
from .base import Algorithm, StepInfo, register


@dataclass
class SparseOptions:
    density: float = doc(0.01, "share of the gradient each rank selects: k = max(1, floor(n*density))")
    warmup_dense_steps: int = doc(0, "dense allreduce steps before switching to sparse")

    def validate(self, cfg, world_size=None):
        if not 0 < self.density <= 1:
            raise ConfigError(f"algo.density must be in (0, 1], got {self.density}")
        if self.warmup_dense_steps < 0:
            raise ConfigError(f"algo.warmup_dense_steps must be >= 0, got {self.warmup_dense_steps}")


@register
class TopkA(Algorithm):
    name = "topka"
    Options = SparseOptions

    def __init__(self, *args):
        super().__init__(*args)
        self.opt = self.make_optimizer()
        self.init_sparse()

    # -- what a sparse allreduce overrides ------------------------------------------
    def init_sparse(self):
        """Build the sparse allreduce's per-rank state."""
        self.residual = self.xp.zeros_like(self.params)
        self.k = max(1, min(self.params.size, math.floor(self.params.size * self.opts.density)))

    def sparse_allreduce(self, grad):
        """grad <- the sparse average (in place); updates the residual."""
        topka(grad, self.residual, self.k, channel=self.channel, out=grad)

    def local_state(self) -> dict:
        """This rank's error-feedback state, as checkpointed under /ranks/<r>/."""
        return {"residual": self.residual}

    def load_local_state(self, loc: dict):
        self.residual[...] = self.xp.asarray(loc["residual"])

    def reset_local_state(self):
        """Fresh state after a resume at another world size (reshard)."""
        self.residual.fill(0)

    # -- shared by every sparse allreduce with error feedback -----------------------
    def step(self, shard) -> StepInfo:
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        if self.step_count < self.opts.warmup_dense_steps:
            allreduce_mean(self.grad, channel=self.channel)
        else:
            self.sparse_allreduce(self.grad)
        self.opt.step(self.params, self.grad, self.lr())
        self.step_count += 1
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def state_dict(self):
        state = super().state_dict()
        state["shared"].update(self.opt.state_dict())
        state["local"].update(self.local_state())
        return state

    def load_state_dict(self, state, reshard=False):
        super().load_state_dict(state, reshard)
        self.opt.load_state_dict(state["shared"])
        if reshard:
            self.reset_local_state()
        else:
            self.load_local_state(state["local"])

    def summary(self):
        return {"density": self.opts.density, "k": self.k}
