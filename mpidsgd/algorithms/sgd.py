"""Dense synchronous SGD: allreduce the mean gradient, then the local optimizer.

Every rank applies the same update to the same parameters, so parameters
stay bit-identical across ranks.

With `algo.metric_every = m > 0` (convex baselines) it also records, like
centralvr/saga/svrg, the exact relative full-gradient norm ||∇f(x)||/||∇f(x0)||
over all shards every m epochs and at the end (one allreduce of d numbers,
phase `metrics`, not counted as gradient evaluations), so the bench tables
can put plain SGD beside the variance-reduced methods.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..comm.dense import allreduce_mean
from ..config import ConfigError, doc
from .base import Algorithm, StepInfo, register


@dataclass
class SGDOptions:
    metric_every: int = doc(0, "exact relative full-gradient norm over all shards every this many "
                               "epochs and at the end, as the VR methods record it (0 = off)")

    def validate(self, cfg, world_size=None):
        if self.metric_every < 0:
            raise ConfigError(f"algo.metric_every must be >= 0, got {self.metric_every}")


@register
class DenseSGD(Algorithm):
    name = "sgd"
    Options = SGDOptions

    def __init__(self, *args):
        super().__init__(*args)
        self.opt = self.make_optimizer()
        self.metric_every = self.opts.metric_every
        self.history, self.g0, self.final_rel, self.grad_evals = [], 1.0, None, None

    def plan(self, shard):
        super().plan(shard)
        if self.metric_every:
            self.shard = shard
            with self.channel.phase("setup"):
                self.N = float(self.channel.allreduce_values([shard.n])[0])
            g0 = self.full_grad_norm()
            self.g0 = g0 if g0 > 0 else 1.0

    def step(self, shard) -> StepInfo:
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        allreduce_mean(self.grad, channel=self.channel)
        self.opt.step(self.params, self.grad, self.lr())
        self.step_count += 1
        if self.metric_every and shard.pos == 0 and shard.epoch % self.metric_every == 0:
            self.record_metric(shard.epoch)
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    # -- the metric (metric_every > 0) ---------------------------------------------------
    def full_grad_norm(self) -> float:
        """||∇f(params)|| over every rank's shard (collective): each rank's mean
        gradient (L2 included) weighted by its share n_k / N, summed."""
        g = self.xp.zeros_like(self.params)
        self.model.loss_grad(self.params, self.shard.X, self.shard.y, g)
        g *= self.shard.n / self.N
        with self.channel.phase("metrics"):
            self.channel.Allreduce(g)
        return float(self.xp.linalg.norm(g.astype(np.float64)))

    def record_metric(self, epoch):
        self.final_rel = self.full_grad_norm() / self.g0
        self.history.append([int(epoch), int(self.samples), self.final_rel])

    def finish(self):
        if not self.metric_every:
            return
        if not self.history or self.history[-1][1] != self.samples:
            self.record_metric(self.shard.epoch)
        with self.channel.phase("metrics"):
            self.grad_evals = float(self.channel.allreduce_values([self.samples])[0]) / self.N

    def summary(self):
        if not self.metric_every:
            return {}
        return {"final_rel_grad_norm": self.final_rel, "grad_evals_per_sample": self.grad_evals,
                "rel_grad_norm_history": self.history}

    # -- checkpoint state -----------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["shared"]["opt"] = self.opt.state_dict()
        if self.metric_every:
            state["shared"]["metric_history"] = np.array(self.history, np.float64).reshape(-1, 3)
        return state

    def load_state_dict(self, state, reshard=False):
        super().load_state_dict(state, reshard)
        self.opt.load_state_dict(state["shared"].get("opt", {}))
        if self.metric_every and "metric_history" in state["shared"]:
            h = np.asarray(state["shared"]["metric_history"], np.float64).reshape(-1, 3)
            self.history = [[int(e), int(s), float(r)] for e, s, r in h]
