"""`asgd`: asynchronous parameter-server SGD, momentum at the server
(Mitliagkas, Zhang, Hadjis & Ré, "Asynchrony begets Momentum", 2016).

Rank 0 holds w, the momentum v and a version counter, and no training data.
The worker ranks form `algo.groups` groups (psbase.py). One step of a group:

    g = mean over the group's ranks of ∇f(w_read; own batch)   # allreduce
    leader -> server: (g, version_read)
    server: v = μ_L v − α g ; w += v ; version += 1 ;
            τ = version_before_update − version_read  (histogram)
    server -> leader: (w, version) ; leader -> group: broadcast

`groups = 1` is synchronous SGD with heavy-ball momentum on the P − 1 worker
ranks. `run.steps` counts server updates; `run.epochs` counts passes over the
training set by all workers together (G × steps_per_epoch updates per pass).
The server hands out the budget: a group may send one more gradient only if
the updates applied plus the gradients it already allowed stay within it, so
exactly run.steps updates are applied and nothing is computed in vain.

`algo.momentum = "auto"` (this project's extension of the paper's advice, not
the paper's method): at every update μ_L = clip(μ_target − μ̂_S, −0.9, 0.9)
with μ̂_S = 1 − P(τ = 0) over every update so far, this one's τ included.

The momentum has the paper's form (v holds −α times the heavy-ball buffer),
so under a learning-rate schedule it differs from the common optimizer's
`buf = μ buf + g; w −= α buf`; with a constant α the two are the same.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..comm.param_server import Message
from ..config import ConfigError, doc
from ..optim import schedule_from
from .base import StepInfo, register
from .psbase import ServerAlgorithm, check_server_world

AUTO_CLIP = 0.9


@dataclass
class ASGDOptions:
    groups: int = doc(0, "asgd: compute groups the worker ranks form (0 = one per worker rank); "
                         "must divide P - 1")
    momentum_target: float = doc(0.9, "asgd, algo.momentum = \"auto\": total momentum aimed at; "
                                      "explicit = target - measured implicit")

    def validate(self, cfg, world_size=None):
        a = cfg.algo
        if self.groups < 0:
            raise ConfigError(f"algo.groups must be >= 0, got {self.groups}")
        if not -1 < self.momentum_target < 1:
            raise ConfigError(f"algo.momentum_target must be in (-1, 1), got {self.momentum_target}")
        if a.optimizer != "sgd":
            raise ConfigError(f"algo.optimizer: asgd applies v = momentum v - lr g at the server; "
                              f"use sgd, not {a.optimizer!r}")
        if a.nesterov:
            raise ConfigError("algo.nesterov: asgd applies heavy-ball momentum at the server; "
                              "set it false")
        if world_size is not None:
            check_server_world("asgd", world_size, self.groups)


def auto_momentum(target: float, p_tau0) -> float:
    """μ_L = clip(target − (1 − P(τ=0)), −0.9, 0.9); no measurement yet: target (clipped)."""
    implicit = 0.0 if p_tau0 is None else 1.0 - p_tau0
    return float(min(AUTO_CLIP, max(-AUTO_CLIP, target - implicit)))


@register
class ASGD(ServerAlgorithm):
    name = "asgd"
    Options = ASGDOptions
    auto_momentum = True

    @classmethod
    def groups_of(cls, cfg, workers: int) -> int:
        return cfg.algo.options.groups or workers

    def __init__(self, *args):
        super().__init__(*args)
        d, dt = self.params.size, self.params.dtype
        self.auto = self.cfg.algo.momentum == "auto"
        self.mu_fixed = 0.0 if self.auto else float(self.cfg.algo.momentum)
        self.target = float(self.opts.momentum_target)
        self.wd = float(self.cfg.algo.weight_decay)
        self.mu_now = self.mu_fixed
        if self.is_server:
            self.v = self.xp.zeros(d, dt)
            self.rep = Message(d, dt)
            self.outstanding = 0
        else:
            self.gbuf = self.xp.zeros(d + 1, dt)
            self.wmsg = self.client.reply if self.leader else Message(d, dt)

    def plan(self, shard):
        """Budget in server updates: run.steps, or run.epochs passes over the
        whole training set (G x steps_per_epoch updates each)."""
        run = self.cfg.run
        self.total_steps = run.steps or max(1, math.ceil(run.epochs * self.G * shard.steps_per_epoch))
        self.lr_at = schedule_from(self.cfg.algo, self.total_steps)
        self.shard = shard
        self._grant_from(0)

    def _grant_from(self, version):
        """Fresh budget at `version`: group g may send iff g < what is left."""
        left = self.total_steps - version
        if self.is_server:
            self.outstanding = min(self.G, max(0, left))
        else:
            self.finished = self.group >= left

    # -- the server ----------------------------------------------------------------------
    def momentum(self) -> float:
        if self.auto:
            return auto_momentum(self.target, self.stale.p0())
        return self.mu_fixed

    def serve_push(self, src, g, version_read):
        """v = μ v − α g ; w += v ; version += 1 ; reply (w, version, stop)."""
        w, f = self.params, self.params.dtype.type
        g = self.xp.asarray(g)
        if self.wd:
            g = g + f(self.wd) * w
        self.mu_now = self.momentum()
        self.v *= f(self.mu_now)
        self.v -= f(self.lr_at(self.version)) * g
        w += self.v
        self.version += 1
        self.step_count = self.version
        self.outstanding -= 1
        stop = self.version + self.outstanding >= self.total_steps
        if not stop:
            self.outstanding += 1
        self._track_epoch()
        self.rep.payload[...] = self.backend.asnumpy(w)
        self.rep.set_header(version=self.version, flag=int(stop))
        return self.rep.buf

    def serve_read(self, src):
        raise RuntimeError("asgd server: unexpected READ")

    def server_params(self):
        return self.params

    def _track_epoch(self):
        # rank 0 holds no data: its shard position shows the global progress
        per = self.G * self.shard.steps_per_epoch
        self.shard.epoch, rem = divmod(self.version, per)
        self.shard.pos = rem // self.G

    # -- a worker: one group step ----------------------------------------------------------
    def work(self, shard) -> StepInfo:
        d = self.params.size
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        n = self.gchan.size
        if n > 1:
            # the group's mean gradient and loss in one allreduce
            self.gbuf[:d] = self.grad
            self.gbuf[d] = loss
            self.gchan.Allreduce(self.gbuf)
            self.gbuf /= n
            self.grad[...] = self.gbuf[:d]
            loss = float(self.gbuf[d])
        if self.leader:
            c = self.client
            c.out.payload[...] = self.backend.asnumpy(self.grad)
            c.out.set_header(version=self.version, loss=loss, samples=n * int(X.shape[0]))
            if n == 1:
                # exponential_total: a group's whole cycle (this push, the
                # reply, the next gradient) is one exponential draw
                self.compute_emu.chain(time.perf_counter())
            c.push()
        if n > 1:
            self.gchan.Bcast(self.wmsg.buf, root=0)
        self.params[...] = self.xp.asarray(self.wmsg.payload)
        self.version, _, _, stop = self.wmsg.header()
        self.finished = bool(stop)
        self.step_count += 1
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    # -- reporting, state --------------------------------------------------------------------
    def log_fields(self):
        out = super().log_fields()
        if self.is_server:
            out["momentum"] = self.mu_now
        return out

    def summary(self):
        out = super().summary()
        out["momentum_final"] = self.mu_now
        out["momentum_auto"] = self.auto
        return out

    def state_dict(self):
        local = {"params": self.params, **self.base_local()}
        if self.is_server:
            local.update(v=self.v, outstanding=self.outstanding, mu_now=np.float64(self.mu_now))
        return {"shared": self.shared_state(), "local": local}

    def load_state_dict(self, state, reshard=False):
        """Restore; with `reshard` (another world size) the server's w and
        version come back, momentum and per-rank state start fresh."""
        sh = state["shared"]
        self.params[...] = self.xp.asarray(sh["params"])
        if reshard:
            self.version = int(sh["step"])
            self.step_count = self.version if self.is_server else 0
            self._grant_from(self.version)
            return
        lo = state["local"]
        self.params[...] = self.xp.asarray(lo["params"])
        self.load_base_local(lo)
        if self.is_server:
            self.v[...] = self.xp.asarray(lo["v"])
            self.outstanding = int(lo["outstanding"])
            self.mu_now = float(lo["mu_now"])
            self._track_epoch()
