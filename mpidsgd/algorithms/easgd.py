"""`easgd`: asynchronous Elastic Averaging SGD on the parameter server
(Zhang, Choromanska & LeCun, "Deep learning with Elastic Averaging SGD", 2015).

Rank 0 holds the centre variable x̃ and no training data; every other rank is
a worker with its own x_i and its own copy of the common optimizer (momentum
or Nesterov: EAMSGD). Worker i, at each local step t:

    x_i = LocalOpt(x_i, ∇f(x_i; batch))
    every H-th step (algo.H):  read x̃ from the server
                               e = α (x_i − x̃) ; x_i −= e ; send e
    server, on e:              x̃ += e

with α = algo.elastic_beta / W (W = worker ranks). `run.steps` counts each
worker's local steps (`run.epochs`: epochs of its shard, so all workers
together pass that many times over the training set). The centre variable is
what is evaluated and checkpointed. Staleness τ of an elastic update = pushes
applied between the worker's read and its push.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..comm.param_server import Message
from ..config import ConfigError, doc
from .base import StepInfo, register
from .psbase import ServerAlgorithm, check_server_world


@dataclass
class EASGDOptions:
    H: int = doc(8, "local steps between two averagings (sync interval)")
    elastic_beta: float = doc(0.9, "easgd: elastic moving rate beta; alpha = beta / worker ranks")

    def validate(self, cfg, world_size=None):
        if self.H < 1:
            raise ConfigError(f"algo.H must be >= 1, got {self.H}")
        if not 0 < self.elastic_beta <= 1:
            raise ConfigError(f"algo.elastic_beta must be in (0, 1], got {self.elastic_beta}")
        if world_size is not None:
            check_server_world("easgd", world_size)


@register
class EASGD(ServerAlgorithm):
    name = "easgd"
    Options = EASGDOptions

    def __init__(self, *args):
        super().__init__(*args)
        d, dt = self.params.size, self.params.dtype
        self.H = int(self.opts.H)
        self.alpha = float(self.opts.elastic_beta) / self.W
        self.exchanges = 0
        if self.is_server:
            self.rep = Message(d, dt)
        else:
            self.opt = self.make_optimizer()
            self.centre_read = self.xp.zeros(d, dt)
            self.sent_sum = np.zeros(d, np.float64)     # Σ e this worker sent (float64)
            self.samples_sent = 0                        # samples reported with the pushes

    def done(self) -> bool:
        if self.is_server:
            return super().done()
        return self.step_count >= self.total_steps

    # -- the server: x̃ is its params -------------------------------------------------------
    def serve_read(self, src):
        self.rep.payload[...] = self.backend.asnumpy(self.params)
        self.rep.set_header(version=self.version)
        return self.rep.buf

    def serve_push(self, src, e, version_read):
        """x̃ += e; no reply (the worker already moved by −e)."""
        self.params += self.xp.asarray(e)
        self.version += 1
        self.step_count = self.version
        # rank 0 holds no data: its shard position shows the workers' mean progress
        spe = self.shard.steps_per_epoch
        self.shard.epoch, pos = divmod(self.version * self.H // self.W, spe)
        self.shard.pos = pos
        return None

    def server_params(self):
        return self.params

    # -- a worker ---------------------------------------------------------------------------
    def work(self, shard) -> StepInfo:
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        self.opt.step(self.params, self.grad, self.lr())
        self.step_count += 1
        if self.step_count % self.H == 0 or self.step_count == self.total_steps:
            self.elastic()
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def elastic(self):
        """Read x̃, e = α (x_i − x̃), x_i −= e, send e (the server adds it)."""
        c, f = self.client, self.params.dtype.type
        rep = c.read()
        version = rep.header()[0]
        self.centre_read[...] = self.xp.asarray(rep.payload)
        e = f(self.alpha) * (self.params - self.centre_read)
        self.params -= e
        c.out.payload[...] = self.backend.asnumpy(e)
        c.out.set_header(version=version, samples=self.samples - self.samples_sent)
        self.samples_sent = self.samples
        c.push(want_reply=False)
        self.sent_sum += c.out.payload
        self.exchanges += 1

    # -- reporting, state --------------------------------------------------------------------
    def finish(self):
        super().finish()
        # nothing lost: Σ over workers of what they sent against the centre's change
        sent = np.zeros(self.params.size, np.float64) if self.is_server else self.sent_sum.copy()
        with self.channel.phase("metrics"):
            self.channel.Allreduce(sent)
            change = self.centre_change if self.is_server else np.zeros_like(sent)
            self.channel.Bcast(change, root=0)
        self.stats["elastic_sent_sum_minus_centre_change"] = float(np.max(np.abs(sent - change))) \
            if sent.size else 0.0
        self.stats["elastic_centre_change_max"] = float(np.max(np.abs(change))) if sent.size else 0.0
        self.stats["elastic_alpha"] = self.alpha

    def summary(self):
        return dict(self.stats)

    def state_dict(self):
        local = {"params": self.params, **self.base_local()}
        if self.is_server:
            local["centre_start"] = self.centre_start
        else:
            local["sent_sum"] = self.sent_sum
            local["samples_sent"] = self.samples_sent
            local["opt"] = self.opt.state_dict()
        return {"shared": self.shared_state(), "local": local}

    def load_state_dict(self, state, reshard=False):
        """Restore; with `reshard` every rank restarts from the saved centre."""
        sh = state["shared"]
        self.params[...] = self.xp.asarray(sh["params"])
        if reshard:
            self.version = int(sh["step"])
            return
        lo = state["local"]
        self.params[...] = self.xp.asarray(lo["params"])
        self.load_base_local(lo)
        if self.is_server:
            self.centre_start[...] = np.asarray(lo["centre_start"])
        else:
            self.sent_sum[...] = np.asarray(lo["sent_sum"])
            self.samples_sent = int(lo["samples_sent"])
            self.opt.load_state_dict(lo.get("opt", {}))

    def plan(self, shard):
        super().plan(shard)
        if self.is_server:
            self.centre_start = self.backend.asnumpy(self.params).astype(np.float64)

    @property
    def centre_change(self):
        return self.backend.asnumpy(self.params).astype(np.float64) - self.centre_start
