"""What the parameter-server algorithms (asgd, easgd) share: rank 0 serves and
holds no training data, the other ranks form compute groups, a group's leader
talks to the server (comm/param_server.py), quiescent points, the end of the
run, staleness bookkeeping and checkpoint state.

Groups: the W = P - 1 worker ranks are split into G contiguous groups of W/G
ranks (sub-communicators from Split); the first rank of a group is its leader.
Inside a group of more than one rank the leader starts every step with a
one-number command (GO or QUIESCE) broadcast to its members, so a group's
collectives always meet even though each rank learns of an agreed quiescent
point at its own moment: a member that gets QUIESCE inside a step idles until
it sees the verdict too, and a member that sees the verdict first keeps
serving its leader's GO steps until the QUIESCE command comes.

Staleness τ of an update = server version when applied − version the sender
read. Its histogram has a fixed number of bins (checkpoints keep one shape);
the last bin counts every τ at or above it. The geometric fit of the
histogram gives the implicit momentum 1 − P(τ = 0).
"""
from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..comm.param_server import Client, Server
from ..config import ConfigError
from .base import Algorithm, StepInfo

GO, QUIESCE = 1.0, 2.0


def staleness_bins(groups: int) -> int:
    """Histogram bins: 8 times the groups (mean M - 1 leaves ample room), at least 64."""
    return max(64, 8 * groups)


class Staleness:
    """Histogram of τ (fixed bins, last one open), exact sum for the mean."""

    def __init__(self, bins: int):
        self.hist = np.zeros(bins, np.int64)
        self.total = 0

    def add(self, tau: int):
        self.hist[min(tau, self.hist.size - 1)] += 1
        self.total += tau

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    def p0(self) -> float | None:
        n = self.count
        return float(self.hist[0]) / n if n else None

    def stats(self) -> dict:
        """staleness_hist (indexed by τ, trailing zeros cut), p_tau0,
        staleness_mean, implicit_momentum = 1 - P(τ = 0)."""
        n = self.count
        nz = np.flatnonzero(self.hist)
        hist = [int(c) for c in self.hist[:nz[-1] + 1]] if nz.size else []
        p0 = self.p0()
        return {"staleness_hist": hist, "p_tau0": p0,
                "staleness_mean": self.total / n if n else None,
                "implicit_momentum": None if p0 is None else 1.0 - p0}


def check_server_world(name: str, size: int, groups: int = 0):
    """World rules of a parameter-server algorithm (its Options.validate):
    rank 0 serves, so at least 2 ranks; `groups` (0 = one per worker rank)
    must divide the P - 1 worker ranks."""
    if size < 2:
        raise ConfigError(f"algo.name = {name!r} needs at least 2 ranks (rank 0 is the "
                          f"parameter server), this run has {size}")
    W = size - 1
    G = groups or W
    if G < 1 or W % G:
        raise ConfigError(f"algo.groups = {G} must divide the {W} worker ranks "
                          f"(world size {size} minus the server)")


class ServerAlgorithm(Algorithm):
    """Base of asgd and easgd; subclasses give serve_push/serve_read (server)
    and work (every worker rank: one step of the group)."""

    synchronous = False

    @classmethod
    def data_skip(cls, cfg) -> int:
        return 1

    @classmethod
    def groups_of(cls, cfg, workers: int) -> int:
        return workers

    def __init__(self, *args):
        super().__init__(*args)
        self.is_server = self.rank == 0
        self.W = self.size - 1
        self.G = type(self).groups_of(self.cfg, self.W)
        per = self.W // self.G
        self.group = None if self.is_server else (self.rank - 1) // per
        self.gchan = self.channel.split(MPI.UNDEFINED if self.is_server else self.group)
        self.leader = self.gchan is not None and self.gchan.rank == 0
        self.leaders = [1 + g * per for g in range(self.G)]
        d, dt = self.params.size, self.params.dtype
        self.server = Server(self.channel, d, dt) if self.is_server else None
        self.client = Client(self.channel, d, dt) if self.leader else None
        self.cmd = np.zeros(1, np.float64)
        self.quiesce_pending = False
        self.finished = False              # worker: the server said stop
        self.version = 0                   # server: updates applied; worker: last read
        self.byes = self.markers = 0
        self.from_rank = np.zeros(self.size, np.int64)   # server: pushes received per rank
        self.stale = Staleness(staleness_bins(self.G))
        self.consensus = None
        self.last_loss = None
        self.served = 0                    # server: samples behind the pushes it received
        self.stats = {}

    # -- one step -----------------------------------------------------------------------
    def step(self, shard) -> StepInfo:
        if self.is_server:
            return self._serve_some()
        if self.quiesce_pending:           # leader is at the quiescent point: wait for the verdict
            time.sleep(1e-3)
            return StepInfo()
        if not self._command(GO):
            return StepInfo()
        return self.work(shard)

    def _command(self, what) -> bool:
        """Leader: broadcast `what` to the group. Member: receive it; False
        when it is QUIESCE (the member then waits for the verdict)."""
        if self.gchan.size == 1:
            return True
        if self.leader:
            self.cmd[0] = what
        self.gchan.Bcast(self.cmd, root=0)
        if not self.leader and self.cmd[0] == QUIESCE:
            self.quiesce_pending = True
            return False
        return True

    def _serve_some(self) -> StepInfo:
        """Handle messages until one update is applied or none is waiting."""
        while True:
            got = self.server.poll(self._handle)
            if got is None:
                return StepInfo()
            if got[0] == "push":
                return StepInfo(loss=self.last_loss)

    def _handle(self, kind, src, buf):
        if kind == "push":
            self.from_rank[src] += 1
            version, loss, samples, _ = self.server.header(buf)
            self.served += samples
            self.stale.add(self.version - version)
            self.last_loss = loss
            return self.serve_push(src, buf[:self.params.size], version)
        if kind == "read":
            return self.serve_read(src)
        if kind == "quiesce":
            self.markers += 1
        elif kind == "bye":
            self.byes += 1
        return None

    def done(self) -> bool:
        if self.is_server:
            return self.byes >= self.G
        return self.finished

    # -- quiescent points, the end --------------------------------------------------------
    def quiesce(self):
        """Collective: afterwards no push, read, reply or command is in
        flight, and every rank holds the server's state (shared checkpoint
        part). Returns the updates the server applied on the way (late
        gradients of leaders that had not yet seen the verdict)."""
        took = []
        if self.is_server:
            while self.markers < self.G:
                if self.server.poll(self._handle, block=True)[0] == "push":
                    took.append((self.step_count, StepInfo(loss=self.last_loss)))
            self.markers = 0
            self.server.complete()
        elif self.leader:
            self._command(QUIESCE)
            self.client.quiesce()
        elif not self.quiesce_pending:
            while self._command(GO):       # serve the leader's steps until it quiesces
                took.append((self.step_count + 1, self.work(self.shard)))
        self.quiesce_pending = False
        self.channel.Barrier()
        with self.channel.phase("checkpoint"):
            self._share()
        return took

    def _share(self):
        """Every rank gets the server's (parameters, version)."""
        self.consensus = self.server_params().copy() if self.is_server else \
            self.xp.empty_like(self.params)
        self.channel.Bcast(self.consensus, root=0)
        v = self.channel.allreduce_values([self.version if self.is_server else 0])
        self.shared_step = int(v[0])

    def finish(self):
        if self.leader:
            self.client.bye()
        if self.is_server:
            while self.byes < self.G:
                self.server.poll(self._handle, block=True)
            self.server.complete()
        with self.channel.phase("eval"):
            self._share()
        self._gather_stats()

    def consensus_params(self):
        return self.params if self.consensus is None else self.consensus

    def plan(self, shard):
        super().plan(shard)
        self.shard = shard

    # -- reporting ------------------------------------------------------------------------
    def _gather_stats(self):
        """Message balance: pushes sent per rank against the server's count
        per source, replies the server sent against replies received."""
        c = self.client
        mine = np.array([c.pushes if c else 0, c.received if c else 0, self.step_count,
                         self.server.sent if self.server else 0], np.float64)
        every = np.zeros((self.size, 4), np.float64)
        with self.channel.phase("metrics"):
            self.channel.Allgather(mine, every)
            got = self.from_rank.astype(np.float64)
            self.channel.Bcast(got, root=0)
            st = np.zeros(self.stale.hist.size + 2, np.float64)
            if self.is_server:
                st[:-2], st[-2], st[-1] = self.stale.hist, self.stale.total, self.version
            self.channel.Bcast(st, root=0)
        self.stale.hist[...] = st[:-2].astype(np.int64)
        self.stale.total = int(st[-2])
        self.stats = {"server_updates": int(st[-1]),
                      "ps_pushes_sent_by_rank": [int(x) for x in every[:, 0]],
                      "ps_replies_received_by_rank": [int(x) for x in every[:, 1]],
                      "ps_pushes_received_from_rank": [int(x) for x in got],
                      "ps_replies_sent": int(every[0, 3]),
                      "worker_steps_by_rank": [int(x) for x in every[:, 2]],
                      "groups": self.G, **self.stale.stats()}

    def summary(self):
        return dict(self.stats)

    def progress_samples(self):
        return self.served if self.is_server else super().progress_samples()

    def log_fields(self):
        return self.stale.stats() if self.is_server else {}

    # -- checkpoint state -------------------------------------------------------------------
    def base_local(self) -> dict:
        local = {"step": self.step_count, "samples": self.samples, "version": self.version,
                 "finished": int(self.finished), "byes": self.byes,
                 "from_rank": self.from_rank, "stale_hist": self.stale.hist,
                 "stale_total": self.stale.total, "served": self.served}
        if self.client is not None:
            local.update(sent=self.client.sent, received=self.client.received,
                         pushes=self.client.pushes)
        if self.server is not None:
            local.update(sent=self.server.sent, received=self.server.received)
        return local

    def load_base_local(self, lo):
        self.step_count, self.samples = int(lo["step"]), int(lo["samples"])
        self.version, self.finished = int(lo["version"]), bool(int(lo["finished"]))
        self.byes = int(lo["byes"])
        self.from_rank[...] = np.asarray(lo["from_rank"])
        self.stale.hist[...] = np.asarray(lo["stale_hist"])
        self.stale.total = int(lo["stale_total"])
        self.served = int(lo["served"])
        end = self.client or self.server
        if end is not None:
            end.sent, end.received = int(lo["sent"]), int(lo["received"])
        if self.client is not None:
            self.client.pushes = int(lo["pushes"])

    def shared_state(self) -> dict:
        if self.consensus is not None:     # from quiesce(): identical on every rank
            return {"params": self.consensus, "step": self.shared_step}
        return {"params": self.params, "step": 0}
