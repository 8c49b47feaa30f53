"""`spardl`: synchronous SGD whose gradient allreduce is SparDL (Spar-Reduce-
Scatter, optional teams with B-SAG or R-SAG, Bruck all-gather, global residual
collection; comm/spardl.py, algorithms/spardl.md).

Per step: the raw local gradient (no learning rate, no momentum) plus this
rank's residual is sparsified by SparDL; the sparse mean over all ranks, the
same on every rank, replaces the gradient; weight decay and momentum are then
applied densely by the local optimizer, identically everywhere, so parameters
stay bit-identical across ranks. The first `warmup_dense_steps` steps use the
dense allreduce instead (residuals untouched).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..comm import costmodel as cm
from ..comm.dense import allreduce_mean
from ..comm.spardl import SparDL, check_spardl
from ..config import ConfigError, doc
from .base import Algorithm, StepInfo, register


@dataclass
class SparDLOptions:
    density: float = doc(0.01, "share of each block sent: k_b = max(1, floor(ceil(n / (P/teams)) * density))")
    teams: int = doc(1, "SparDL teams d (divides the world size); d > 1 adds a Spar-All-Gather")
    sag: str = doc("bruck", "Spar-All-Gather across teams: bruck (B-SAG, any d) or recursive (R-SAG, d a power of two)")
    warmup_dense_steps: int = doc(0, "dense allreduce steps before switching to sparse")

    def validate(self, cfg):
        if not 0 < self.density <= 1:
            raise ConfigError(f"algo.density must be in (0, 1], got {self.density}")
        if self.teams < 1:
            raise ConfigError(f"algo.teams must be >= 1, got {self.teams}")
        if self.sag not in ("bruck", "recursive"):
            raise ConfigError(f"algo.sag must be bruck or recursive, got {self.sag!r}")
        if self.sag == "recursive" and self.teams & (self.teams - 1):
            raise ConfigError(f"algo.sag = 'recursive' needs algo.teams a power of two, got {self.teams}")
        if self.warmup_dense_steps < 0:
            raise ConfigError(f"algo.warmup_dense_steps must be >= 0, got {self.warmup_dense_steps}")


@register
class SparDLSGD(Algorithm):
    name = "spardl"
    Options = SparDLOptions

    @classmethod
    def check_world(cls, cfg, size):
        """algo.teams must divide the number of ranks."""
        o = cfg.algo.options
        problem = check_spardl(size, o.density, o.teams, o.sag)
        if problem:
            raise ConfigError(f"algo.{problem}")

    def __init__(self, *args):
        super().__init__(*args)
        o = self.opts
        self.check_world(self.cfg, self.size)
        self.opt = self.make_optimizer()
        self.sd = SparDL(self.params.size, self.params.dtype, o.density, channel=self.channel,
                         teams=o.teams, sag=o.sag, xp=self.xp)

    def step(self, shard) -> StepInfo:
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        if self.step_count < self.opts.warmup_dense_steps:
            allreduce_mean(self.grad, channel=self.channel)
        else:
            self.sd.allreduce(self.grad, out=self.grad)
        self.opt.step(self.params, self.grad, self.lr())
        self.step_count += 1
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def state_dict(self):
        state = super().state_dict()
        state["shared"].update(self.opt.state_dict())
        sd = self.sd.state_dict()
        state["local"].update(residual=sd["residual"], sag_h=sd["h"])
        return state

    def load_state_dict(self, state, reshard=False):
        super().load_state_dict(state, reshard)
        self.opt.load_state_dict(state["shared"])
        if reshard:
            self.sd.E.fill(0)
            self.sd.h = self.sd.h_min
        else:
            loc = state["local"]
            self.sd.load_state_dict({"residual": loc["residual"], "h": loc["sag_h"]})

    def summary(self):
        sd = self.sd
        # per sparse step; B-SAG figures with the start value of h
        nbytes, msgs = cm.spardl(sd.n, sd.dtype.itemsize, sd.P, sd.density, teams=sd.teams,
                                 sag=sd.sag)
        out = {"density": sd.density, "teams": sd.teams, "sag": sd.sag, "k_b": sd.k_b,
               "block_len": sd.c, "k": sd.k_b * sd.p_team,
               "predicted_bytes_per_step": nbytes, "predicted_messages_per_step": msgs}
        if sd.teams > 1 and sd.sag == "bruck":
            out["sag_h"] = sd.h          # this rank's group; the start value is max(1, k_b // d)
        return out
