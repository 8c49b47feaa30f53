"""CentralVR (De & Goldstein, ICDM 2016): variance reduction with one gradient
per step and one exchange per epoch; modes single, sync and async.

Objective f(x) = (1/N) Σ_i f_i(x) + (l2/2)||x||². Each rank keeps a tableau T
of the last data gradient of every sample of its shard (tableau.py) and the
average ḡ of the previous epoch's gradients, frozen for a whole epoch:

    epoch 0 (fill): g = ∇f_i(x); T[i] = g; x -= lr (g + l2 x)
    epoch m >= 1:   g = ∇f_i(x); x -= lr (g - T[i] + ḡ + l2 x); T[i] = g
    end of epoch:   ḡ_k = mean of T_k
                    sync:  (x, ḡ) = allreduce [w_k x_k, w_k ḡ_k], w_k = n_k / N
                    async: report (x_k, ḡ_k) minus the last report to the server

The L2 term is applied exactly at every step and never stored. In async mode
rank 0 is a server holding no data (its shard is left out of training); it
keeps x, ḡ = Σ_k w_k (last values reported by worker k) and answers every
report with its current (x, ḡ). It replies to nobody until every worker has
sent the report of its fill epoch (our choice: the averaged start that the
sync mode also has). Workers end with a FINAL report; the server stops when
it has one from every worker.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..comm.report_server import client_exchange, client_quiesce, server_receive, server_reply
from .base import register
from .vrbase import VRBase, VROptions


@dataclass
class CentralVROptions(VROptions):
    modes = ("single", "sync", "async")


@register
class CentralVR(VRBase):
    name = "centralvr"
    Options = CentralVROptions

    def __init__(self, *args):
        super().__init__(*args)
        self.is_server = self.mode == "async" and self.rank == 0
        d = self.params.size
        if self.mode == "async":
            xp = self.xp
            self.last_x, self.last_g = xp.zeros(d, self.params.dtype), xp.zeros(d, self.params.dtype)
            self.report = xp.zeros(3 * d + 1, self.params.dtype)
            self.reply = xp.zeros(2 * d, self.params.dtype)
            self.sent = self.received = 0
            self.markers = self.finals = self.reports = 0
            self.first = np.zeros(self.size, bool)
            self.waiting = []
            self.own = xp.zeros((self.size, 2 * d), self.params.dtype)   # last report per worker
            self.gsum = xp.zeros((self.size, d), np.float64)
            self.have_gsum = np.zeros(self.size, bool)
            self.stale_history = []
            self.g_start = xp.zeros(d, np.float64)
            self.g_start_valid = 0.0
            if self.is_server:
                self.params[...] = 0       # x = Σ_k w_k x_k of reports: zero-based

    # -- the worker's step -----------------------------------------------------------
    def update(self, X, y, ids):
        # the correction is anchored at ḡ, frozen for the epoch
        return self.tableau_step(X, y, ids, self.gbar)

    def begin_epoch(self, shard):
        # async: the worker's shard gradient at the x it starts from (stale metric)
        if self.mode == "async" and self.metric_due():
            self.local_grad_sum(self.params, self.g_start, with_l2=True)
            self.g_start_valid = 1.0

    def end_epoch(self, shard, last):
        self.tab.mean(self.gk)
        if self.mode == "async":
            self.exchange(last)
        else:
            self.average(self.params, self.gk, self.gbar)

    # -- async: worker side ------------------------------------------------------------
    def exchange(self, final):
        d, x, rep = self.params.size, self.params, self.report
        rep[:d] = x - self.last_x
        rep[d:2 * d] = self.gk - self.last_g
        rep[2 * d:3 * d] = self.g_start if self.g_start_valid else 0.0
        rep[3 * d] = self.g_start_valid
        self.g_start_valid = 0.0
        self.last_x[...] = x
        self.last_g[...] = self.gk
        client_exchange(rep, self.reply, channel=self.channel, final=final)
        self.sent += 1
        self.received += 1
        x[...] = self.reply[:d]
        self.gbar[...] = self.reply[d:]

    # -- async: server side -------------------------------------------------------------
    def serve(self):
        """Handle one message: apply a report and answer it, or count a marker."""
        d, buf = self.params.size, self.report
        src, kind = server_receive(buf, channel=self.channel)
        self.received += 1
        if kind == "quiesce":
            self.markers += 1
            return None
        w = self.weights[src]
        self.own[src] += buf[:2 * d]
        self.params += w * buf[:d]
        self.gbar += w * buf[d:2 * d]
        if buf[3 * d]:
            self.gsum[src] = buf[2 * d:3 * d]
            self.have_gsum[src] = True
            if self.have_gsum[1:].all():
                rel = float(self.xp.linalg.norm(self.gsum.sum(axis=0) / self.N)) / self.g0
                self.stale_history.append([self.reports, rel])
        self.reports += 1
        self.finals += kind == "final"
        self.step_count += 1
        if not self.first.all():
            # the averaged start: hold every reply until each worker's fill report is in
            self.first[src] = True
            self.first[0] = True
            self.waiting.append(src)
            if self.first.all():
                for dest in self.waiting:
                    self.reply_to(dest)
                self.waiting = []
            return None
        self.reply_to(src)
        return None

    def release_own(self):
        """Quiesce before every fill report is in: the workers held at the
        averaged start would wait for quiesced ones, so each goes on from its
        own last report instead (the server state is unchanged)."""
        for dest in self.waiting:
            server_reply(self.own[dest], dest, channel=self.channel)
            self.sent += 1
        self.waiting = []

    def reply_to(self, dest):
        d = self.params.size
        self.reply[:d] = self.params
        self.reply[d:] = self.gbar
        server_reply(self.reply, dest, channel=self.channel)
        self.sent += 1

    def done(self):
        if self.is_server:
            return self.finals >= self.size - 1
        return super().done()

    def quiesce(self):
        """Collective: after it no report, reply or marker is in flight."""
        if self.mode != "async":
            return
        if self.is_server:
            while self.markers < self.size - 1:
                if self.waiting and self.markers + len(self.waiting) >= self.size - 1:
                    self.release_own()
                else:
                    self.serve()
            self.markers = 0
        else:
            client_quiesce(channel=self.channel)
            self.sent += 1
        self.channel.Barrier()

    def finish_async(self):
        # everyone ends with the server's (x, ḡ)
        self.channel.Bcast(self.params, root=0)
        self.channel.Bcast(self.gbar, root=0)

    # -- state -------------------------------------------------------------------------
    def extra_state(self):
        if self.mode != "async":
            return {}, {}
        local = {"last_x": self.last_x, "last_g": self.last_g, "sent": self.sent,
                 "received": self.received, "markers": self.markers, "finals": self.finals,
                 "reports": self.reports, "first": self.first.astype(np.int8),
                 "gsum": self.gsum, "have_gsum": self.have_gsum.astype(np.int8), "own": self.own,
                 "waiting": np.array(self.waiting + [-1], np.int64)}
        return {}, local

    def load_extra_state(self, shared, local):
        if self.mode != "async":
            return
        self.last_x[...] = self.xp.asarray(local["last_x"])
        self.last_g[...] = self.xp.asarray(local["last_g"])
        for key in ("sent", "received", "markers", "finals", "reports"):
            setattr(self, key, int(local[key]))
        self.first[...] = np.asarray(local["first"], bool)
        self.gsum[...] = self.xp.asarray(local["gsum"])
        self.have_gsum[...] = np.asarray(local["have_gsum"], bool)
        self.own[...] = self.xp.asarray(local["own"])
        self.waiting = [int(r) for r in local["waiting"] if r >= 0]

    def summary(self):
        out = super().summary()
        if self.mode == "async":
            out.update(self.async_totals)
            out["server_stale_rel_grad_norm"] = self.stale_history[-1][1] if self.stale_history else None
        return out
