"""`oktopk`: synchronous SGD whose gradient allreduce is Ok-Topk (Li &
Hoefler, PPoPP 2022): reused and nudged local and global thresholds, region
boundaries rebalanced by one allreduce, point-to-point split-and-reduce and
an Allgatherv of the survivors (comm/oktopk.py); a baseline for `spardl`.

The step, dense warm-up, optimizer and checkpoint code are `topka`'s
(algorithms/topka.py). Per-rank state: the residual, both thresholds, the
region boundaries and Ok-Topk's own step counter (sparse steps only).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..comm.oktopk import OkTopk, check_oktopk
from ..config import ConfigError, doc
from .base import register
from .topka import SparseOptions, TopkA


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


@register
class OkTopkSGD(TopkA):
    name = "oktopk"
    Options = OkTopkOptions

    def init_sparse(self):
        o = self.opts
        self.ok = OkTopk(self.params.size, self.params.dtype, o.density, channel=self.channel,
                         threshold_every=o.threshold_every, region_every=o.region_every,
                         throttle=o.throttle, xp=self.xp)

    def sparse_allreduce(self, grad):
        self.ok.allreduce(grad, out=grad)

    def local_state(self):
        st = self.ok.state_dict()
        return {"residual": st["residual"], "oktopk_t": st["t"],
                "oktopk_thresholds": st["thresholds"], "oktopk_bounds": st["bounds"]}

    def load_local_state(self, loc):
        self.ok.load_state_dict({"residual": loc["residual"], "t": loc["oktopk_t"],
                                 "thresholds": loc["oktopk_thresholds"],
                                 "bounds": loc["oktopk_bounds"]})

    def reset_local_state(self):
        self.ok.reset()

    def summary(self):
        ok = self.ok
        return {"density": ok.density, "k": ok.k, "threshold_every": ok.threshold_every,
                "region_every": ok.region_every, "throttle": ok.throttle,
                "local_threshold": ok.local_thr, "global_threshold": ok.global_thr}
