"""`spardl`: synchronous SGD whose gradient allreduce is SparDL (Spar-Reduce-
Scatter, optional teams with B-SAG or R-SAG, Bruck all-gather, global residual
collection; comm/spardl.py, docs/algorithms/sparse.md).

Per step (the step, dense warm-up, optimizer and checkpoint code are
`topka`'s, algorithms/topka.py): the raw local gradient (no learning rate,
no momentum) plus this rank's residual is sparsified by SparDL; the sparse
mean over all ranks, the same on every rank, replaces the gradient; weight
decay and momentum are then applied densely by the local optimizer,
identically everywhere, so parameters stay bit-identical across ranks. The
first `warmup_dense_steps` steps use the dense allreduce instead (residuals
untouched). Per-rank state: the residual and this rank's SAG group's h.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..comm import costmodel as cm
from ..comm.spardl import SparDL, check_spardl
from ..config import ConfigError, doc
from .base import register
from .topka import SparseOptions, TopkA


@dataclass
class SparDLOptions(SparseOptions):
    density: float = doc(0.01, "share of each block sent: k_b = max(1, floor(ceil(n / (P/teams)) * density))")
    teams: int = doc(1, "SparDL teams d (divides the world size); d > 1 adds a Spar-All-Gather")
    sag: str = doc("bruck", "Spar-All-Gather across teams: bruck (B-SAG, any d) or recursive (R-SAG, d a power of two)")

    def validate(self, cfg, world_size=None):
        super().validate(cfg, world_size)
        if self.teams < 1:
            raise ConfigError(f"algo.teams must be >= 1, got {self.teams}")
        if self.sag not in ("bruck", "recursive"):
            raise ConfigError(f"algo.sag must be bruck or recursive, got {self.sag!r}")
        if self.sag == "recursive" and self.teams & (self.teams - 1):
            raise ConfigError(f"algo.sag = 'recursive' needs algo.teams a power of two, got {self.teams}")
        # algo.teams must divide the number of ranks
        problem = check_spardl(world_size, self.density, self.teams, self.sag) if world_size else None
        if problem:
            raise ConfigError(f"algo.{problem}")


@register
class SparDLSGD(TopkA):
    name = "spardl"
    Options = SparDLOptions

    def init_sparse(self):
        o = self.opts
        self.sd = SparDL(self.params.size, self.params.dtype, o.density, channel=self.channel,
                         teams=o.teams, sag=o.sag, xp=self.xp)

    def sparse_allreduce(self, grad):
        self.sd.allreduce(grad, out=grad)

    def local_state(self):
        sd = self.sd.state_dict()
        return {"residual": sd["residual"], "sag_h": sd["h"]}

    def load_local_state(self, loc):
        self.sd.load_state_dict({"residual": loc["residual"], "h": loc["sag_h"]})

    def reset_local_state(self):
        self.sd.E.fill(0)
        self.sd.h = self.sd.h_min

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
