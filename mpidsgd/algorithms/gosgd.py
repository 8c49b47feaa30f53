"""`gosgd`: asynchronous push-sum gossip SGD without a server (GoSGD).

Rank i keeps its own parameters x_i, a push-sum weight alpha_i (float64,
1/M at the start) and its own optimizer state. Every local step:

    g = grad f(x_i; batch) ; x_i = LocalOpt(x_i, g)
    for every message (x_s, a_s) that arrived:          # never waits
        x_i += a_s / (alpha_i + a_s) * (x_s - x_i) ; alpha_i += a_s
    with probability p:                                  # fire and forget
        j = (i + U{1..M-1}) mod M ; alpha_i /= 2 ; push (x_i, alpha_i) to j

Counting messages in flight, sum(alpha) and sum(alpha_i x_i) are unchanged by
every push and merge; only gradient steps move the weighted mean. `finish()`
drains (comm/gossip.py: no message is left in flight, none is lost) and the
consensus is sum(alpha_i x_i) / sum(alpha_i), computed with exact float64
allreduces. Ranks may run different numbers of steps.

Deterministic mode (`algo.deterministic = true`): one shared counter-based
stream decides at step t who pushes and to whom; after its gradient step each
rank pushes as scheduled, then merges the messages pushed to it at step t in
source-rank order. The same code path, reproducible bit for bit, and equal to
a serial simulation. Its ranks run in lock step (one agreed step budget), so
it reports itself `synchronous` (collective stop agreement, evaluation during
training on the consensus).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from ..comm.gossip import Mailbox
from ..config import ConfigError, doc
from ..kernels import mix
from .base import Algorithm, StepInfo, register

SCHEDULE = 0x605D      # stream tag of the shared push schedule (deterministic mode)
LOCAL = 0x605E         # stream tag of a rank's own push draws (free-running mode)


def push_schedule(seed: int, step: int, size: int, p: float):
    """Deterministic mode, step t: (push mask, destination) for every rank,
    drawn from a stream keyed by (seed, t) so every rank computes the same."""
    rng = np.random.default_rng([seed, SCHEDULE, step])
    push = rng.random(size) < p
    dest = (np.arange(size) + rng.integers(1, size, size=size)) % size
    return push, dest


def local_draw(seed: int, rank: int, step: int, size: int, p: float):
    """Free-running mode: this rank's (push?, destination) at its step t."""
    rng = np.random.default_rng([seed, LOCAL, rank, step])
    push = bool(rng.random() < p)
    return push, int((rank + rng.integers(1, size)) % size)


@dataclass
class GossipOptions:
    p: float = doc(0.25, "probability that a rank pushes its model to a random peer after a step")
    max_outstanding: int = doc(2, "pushes in flight per rank; at the bound a push is skipped "
                                  "(weight not halved)")
    deterministic: bool = doc(False, "shared push schedule, messages merged at step boundaries: "
                                     "reproducible, lock-step")
    budget: str = doc("rank", "rank: every rank runs run.steps / run.epochs; shared: the ranks "
                              "together run P times that, so fast ranks take more steps than "
                              "stragglers (progress is learnt from the pushes)")

    def validate(self, cfg, world_size=None):
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"algo.p must be in [0, 1], got {self.p}")
        if not 1 <= self.max_outstanding <= 64:
            raise ConfigError(f"algo.max_outstanding must be in 1..64, got {self.max_outstanding}")
        if self.budget not in ("rank", "shared"):
            raise ConfigError(f"algo.budget must be rank or shared, got {self.budget!r}")
        if self.budget == "shared" and self.deterministic:
            raise ConfigError("algo.budget = 'shared' needs free-running ranks "
                              "(algo.deterministic = false): lock step has one budget")


@register
class GoSGD(Algorithm):
    name = "gosgd"
    Options = GossipOptions
    synchronous = False

    def __init__(self, *args):
        super().__init__(*args)
        o = self.opts
        self.p, self.det = float(o.p), bool(o.deterministic)
        # lock step: the stop agreement and evaluation may be collective
        self.synchronous = self.det or self.size == 1
        self.opt = self.make_optimizer()
        self.alpha = 1.0 / self.size
        self.seed = int(self.cfg.run.seed)
        self.box = None
        self.shared_budget = o.budget == "shared" and self.size > 1
        # steps of every rank as far as this rank knows (its own exactly)
        self.known = np.zeros(self.size, np.int64)
        if self.size > 1:
            self.box = Mailbox(self.channel, self.params.size, self.params.dtype,
                               max_outstanding=1 if self.det else int(o.max_outstanding),
                               backend=self.backend,
                               info=self.size if self.shared_budget else 0)
            self._warm_merge()
        self._host = self.backend.xp is np
        self.pushes = self.skipped = self.merged = 0
        self.staleness = 0            # sum over merges of (own step - sender's step)
        self.consensus = None
        self.t_first = self.t_last = None
        self.stats = {}

    def _warm_merge(self):
        """Compile (or load from Numba's disk cache) the merge kernel now.

        Its first call costs 0.5 s (cached) to several seconds (compiled) and
        would otherwise come at each rank's first merge, at a different moment
        on every rank. The asynchronous stop agreement needs every rank to
        poll for a round to complete, so each stalled rank held up all rounds
        (checkpoint requests, signals) while the others stepped on; in a
        short run that was most of it. Here every rank pays it before step 0."""
        one = self.xp.zeros(1, self.params.dtype)
        mix(one, one.copy(), 0.0)

    # -- budget -----------------------------------------------------------------------
    def plan(self, shard):
        super().plan(shard)
        if self.det and self.size > 1:
            # lock step needs one budget: the smallest any rank planned
            b = self.channel.allreduce_values([self.total_steps], op=MPI.MIN)
            self.total_steps = int(b[0])

    def done(self) -> bool:
        """Own budget, or (budget = shared) the steps of all ranks, as far
        as known, reach P budgets. Knowledge lags, so ranks may overshoot a
        little; summary.json reports the samples actually processed."""
        if not self.shared_budget:
            return super().done()
        self.known[self.rank] = self.step_count
        return int(self.known.sum()) >= self.size * self.total_steps

    def lr(self) -> float:
        """The schedule at this rank's step, or (budget = shared) at the known
        global progress: steps of all ranks / P."""
        if not self.shared_budget:
            return super().lr()
        self.known[self.rank] = self.step_count
        return self.lr_at(int(self.known.sum()) // self.size)

    # -- one step ---------------------------------------------------------------------
    def step(self, shard) -> StepInfo:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.consensus = None          # stale once x_i moves
        if self.box is not None and not self.det:
            self.box.poll(self._merge)     # progress: peers' sends complete sooner
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        self.opt.step(self.params, self.grad, self.lr())
        t = self.step_count
        self.step_count += 1
        if self.box is not None:
            (self._exchange_det if self.det else self._exchange_free)(t)
        self.t_last = time.perf_counter()
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def _exchange_free(self, t):
        self.box.poll(self._merge)
        push, dest = local_draw(self.seed, self.rank, t, self.size, self.p)
        if push:
            slot = self.box.free_slot()
            if slot is None:           # bound reached: keep the weight, push later
                self.skipped += 1
            else:
                self._push(dest, slot)

    def _exchange_det(self, t):
        push, dest = push_schedule(self.seed, t, self.size, self.p)
        if push[self.rank]:
            self._push(int(dest[self.rank]), 0)
        for s in np.flatnonzero(push & (dest == self.rank)):
            self.box.receive_from(int(s), self._merge)
        self.box.wait_sends()          # our receiver merged it in this same step

    def _push(self, dest, slot):
        self.alpha /= 2.0
        self.known[self.rank] = self.step_count
        self.box.push(self.params, self.alpha, self.step_count, dest, slot,
                      info=self.known if self.shared_budget else None)
        self.pushes += 1

    def _merge(self, x_s, a_s, step_s, source, info=None):
        """Push-sum merge: x += a_s / (alpha + a_s) * (x_s - x); alpha += a_s."""
        if info is not None:
            np.maximum(self.known, info, out=self.known)
        w = a_s / (self.alpha + a_s)
        mix(self.params, x_s if self._host else self.xp.asarray(x_s), w)
        self.alpha += a_s
        self.merged += 1
        self.staleness += self.step_count - step_s

    # -- drain, consensus ---------------------------------------------------------------
    def _consensus(self):
        """Collective: sum(alpha_i x_i) / sum(alpha_i), accumulated in float64."""
        xp = self.xp
        acc = self.params.astype(xp.float64) * self.alpha
        tot = self.channel.allreduce_values([self.alpha])
        self.channel.Allreduce(acc)
        acc /= tot[0]
        self.consensus = acc.astype(self.params.dtype)
        self.step_min = int(self.channel.allreduce_values([self.step_count], op=MPI.MIN)[0])
        return self.consensus

    def quiesce(self):
        """Collective: merge every message in flight (NBX drain). Every rank
        must take state_dict() before any rank steps again."""
        if self.box is not None:
            self.box.drain(self._merge)
        with self.channel.phase("checkpoint"):     # for the checkpoint's shared state
            self._consensus()

    def finish(self):
        if self.box is not None:
            self.box.drain(self._merge, final=True)
        self._consensus()
        self._gather_stats()

    def consensus_params(self):
        """After finish() or quiesce(): the consensus. In lock-step
        (deterministic) mode it is computed when asked (collective);
        free-running ranks only have their own x_i between drains."""
        if self.consensus is None and self.box is not None and self.synchronous:
            with self.channel.phase("eval"):       # asked for by an evaluation
                return self._consensus()
        return self.params if self.consensus is None else self.consensus

    # -- reporting --------------------------------------------------------------------
    def _gather_stats(self):
        el = (self.t_last - self.t_first) if self.t_first is not None and self.step_count > 1 else 0.0
        rate = (self.step_count - 1) / el if el > 0 else 0.0
        vals = self.channel.allreduce_values(
            [self.pushes, self.skipped, self.merged, self.staleness, self.alpha])
        mine = np.array([self.step_count, rate, self.alpha], np.float64)
        every = np.zeros((self.size, 3), np.float64)
        self.channel.Allgather(mine, every)
        P = self.size
        self.stats = {
            "gossip_pushes_per_rank": vals[0] / P,
            "gossip_skipped_per_rank": vals[1] / P,
            "gossip_merged_per_rank": vals[2] / P,
            "gossip_mean_staleness": vals[3] / vals[2] if vals[2] else 0.0,
            "gossip_weight_sum": float(vals[4]),
            "gossip_steps_by_rank": [int(s) for s in every[:, 0]],
            "gossip_steps_per_s_by_rank": [float(r) for r in every[:, 1]],
            "gossip_weight_by_rank": [float(a) for a in every[:, 2]],
            "gossip_deterministic": self.det,
            "gossip_p": self.p,
            "gossip_budget": self.opts.budget,
        }

    def summary(self):
        return dict(self.stats)

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self):
        """Free-running ranks: take it after quiesce() (nothing in flight, the
        consensus known); deterministic mode is quiescent at every step
        boundary. Random draws are keyed by (seed, rank, step), so the step
        counter is the whole RNG state."""
        local = {"params": self.params, "alpha": np.float64(self.alpha), "step": self.step_count,
                 "samples": self.samples, "pushes": self.pushes, "skipped": self.skipped,
                 "merged": self.merged, "staleness": self.staleness}
        local["opt"] = self.opt.state_dict()
        if self.box is not None:
            local["sent_to"] = self.box.sent_to
            local["recv_from"] = self.box.recv_from
            local["known"] = self.known
        if self.consensus is None and self.synchronous and self.box is not None \
                and self.step_count > 0:
            with self.channel.phase("checkpoint"):  # lock step: every rank is here
                self._consensus()
        if self.consensus is not None:     # from quiesce(): identical on every rank
            shared = {"consensus": self.consensus, "step": self.step_min}
        else:                              # a fresh run (identical start) or P = 1
            shared = {"consensus": self.params, "step": self.step_count}
        return {"shared": shared, "local": local}

    def load_state_dict(self, state, reshard=False):
        """Restore; with `reshard` (another world size) every rank restarts
        from the saved consensus with weight 1/M and fresh optimizer state."""
        xp = self.xp
        if reshard:
            if "consensus" not in state["shared"]:
                raise ValueError("gosgd checkpoint has no consensus to reshard from")
            self.params[...] = xp.asarray(state["shared"]["consensus"])
            self.alpha = 1.0 / self.size
            self.step_count = int(state["shared"]["step"])
            return
        lo = state["local"]
        self.params[...] = xp.asarray(lo["params"])
        self.alpha = float(lo["alpha"])
        self.step_count = int(lo["step"])
        self.samples = int(lo["samples"])
        self.pushes, self.skipped = int(lo["pushes"]), int(lo["skipped"])
        self.merged, self.staleness = int(lo["merged"]), int(lo["staleness"])
        self.opt.load_state_dict(lo.get("opt", {}))
        if self.box is not None:
            self.box.sent_to[...] = np.asarray(lo["sent_to"])
            self.box.recv_from[...] = np.asarray(lo["recv_from"])
            self.known[...] = np.asarray(lo["known"])
        self.consensus = None
