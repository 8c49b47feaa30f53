"""The sparse family: synchronous SGD whose gradient allreduce is a sparse
allreduce with error feedback, chosen by name from comm/sparse_allreduce.py
(docs/algorithms/sparse.md, docs/algorithms/oktopk.md).

One engine, `ErrorFeedbackSGD`, runs every member. Per step: g = local mean
gradient (no learning rate, no momentum); the collective returns the sparse
mean over all ranks of g + residual, identical on every rank, and keeps in
this rank's residual what was not sent; momentum and weight decay are then
applied densely by the local optimizer, identically everywhere, so
parameters stay bit-identical across ranks. The first `warmup_dense_steps`
steps use the dense allreduce instead (residuals untouched). The collective
owns its per-rank state; it is checkpointed under the collective's names in
the rank's local state.

Registered algorithms (name = collective):
- `topka`: TopkA, every rank's exact top-k all-gathered and summed;
- `gtopk`: gTop-k, a tree of pairwise top-k merges and a broadcast
  (a power-of-two number of ranks);
- `spardl`: SparDL, Spar-Reduce-Scatter with optional teams and a
  Spar-All-Gather, then the Bruck all-gather;
- `oktopk`: Ok-Topk (Li & Hoefler, PPoPP 2022), reused thresholds and
  balanced regions.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..comm.dense import allreduce_mean
from ..comm.gtopk import is_power_of_two
from ..comm.oktopk import check_oktopk
from ..comm.sparse_allreduce import build_collective
from ..comm.spardl import check_spardl
from ..config import ConfigError, doc
from .base import Algorithm, StepInfo, register

DENSITY_DOC = ("share of entries each top-k selection keeps: k = max(1, floor(L*density + 1e-9)) of "
               "the L it selects from (topka, gtopk, oktopk: the whole gradient; spardl: "
               "each of its P/teams blocks)")


@dataclass
class SparseOptions:
    density: float = doc(0.01, DENSITY_DOC)
    warmup_dense_steps: int = doc(0, "dense allreduce steps before switching to sparse")

    def validate(self, cfg, world_size=None):
        if not 0 < self.density <= 1:
            raise ConfigError(f"algo.density must be in (0, 1], got {self.density}")
        if self.warmup_dense_steps < 0:
            raise ConfigError(f"algo.warmup_dense_steps must be >= 0, got {self.warmup_dense_steps}")


@dataclass
class SparDLOptions(SparseOptions):
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


@dataclass
class GTopkOptions(SparseOptions):
    def validate(self, cfg, world_size=None):
        super().validate(cfg, world_size)
        if world_size is not None and not is_power_of_two(world_size):
            raise ConfigError(f"algo.name: gtopk needs a power-of-two number of ranks, got {world_size}")


@dataclass
class OkTopkOptions(SparseOptions):
    threshold_every: int = doc(32, "Ok-Topk: steps between exact local/global thresholds (reused and nudged in between)")
    region_every: int = doc(64, "Ok-Topk: steps between region-boundary rebalances (one allreduce)")
    throttle: int = doc(4, "Ok-Topk: most split-and-reduce partners in flight at once")

    def validate(self, cfg, world_size=None):
        problem = check_oktopk(self.density, self.threshold_every, self.region_every,
                               self.throttle)
        if problem:
            raise ConfigError(f"algo.{problem}")
        super().validate(cfg, world_size)


class ErrorFeedbackSGD(Algorithm):
    """SGD with a sparse allreduce with error feedback; subclasses name the
    collective (a key of comm.sparse_allreduce.COLLECTIVES) and their Options."""

    collective = ""
    Options = SparseOptions

    def __init__(self, *args):
        super().__init__(*args)
        self.opt = self.make_optimizer()
        self.sparse = build_collective(self.collective, self.params.size, self.params.dtype,
                                       self.opts, channel=self.channel, xp=self.xp)

    def step(self, shard) -> StepInfo:
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        if self.step_count < self.opts.warmup_dense_steps:
            allreduce_mean(self.grad, channel=self.channel)
        else:
            self.sparse.allreduce(self.grad, out=self.grad)
        self.opt.step(self.params, self.grad, self.lr())
        self.step_count += 1
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def state_dict(self):
        state = super().state_dict()
        state["shared"]["opt"] = self.opt.state_dict()
        state["local"].update(self.sparse.state_dict())
        return state

    def load_state_dict(self, state, reshard=False):
        super().load_state_dict(state, reshard)
        self.opt.load_state_dict(state["shared"].get("opt", {}))
        if reshard:
            self.sparse.reset()
        else:
            self.sparse.load_state_dict(state["local"])

    def summary(self):
        return self.sparse.summary()


@register
class TopkASGD(ErrorFeedbackSGD):
    name = collective = "topka"


@register
class GTopkSGD(ErrorFeedbackSGD):
    name = collective = "gtopk"
    Options = GTopkOptions


@register
class SparDLSGD(ErrorFeedbackSGD):
    name = collective = "spardl"
    Options = SparDLOptions


@register
class OkTopkSGD(ErrorFeedbackSGD):
    name = collective = "oktopk"
    Options = OkTopkOptions
