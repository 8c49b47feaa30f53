"""Periodic averaging: local SGD, DiLoCo and PALSGD (docs/algorithms/local-sgd.md).

One engine, three presets. Each rank k keeps its own inner model x_k and
inner optimizer; every rank also holds the global model x̄ of the last sync
(identical everywhere) and the replicated outer optimizer state.

    warm-up (t < T0): synchronous data-parallel SGD (allreduce of gradients);
                      then x̄ = x_k (identical on every rank, so the mean is a copy)
    local step τ = t - T0 = 0, 1, ...:
        PALSGD mixing step with probability p (no batch, no gradient, no message):
            x_k -= (α_t η / p) (x_k - x̄)
        otherwise a gradient step of the inner optimizer with lr α_t / (1 - p)
        if (τ + 1) % H == 0:                      # the only communication
            localsgd:        x̄ = mean_k x_k
            diloco / palsgd: Δ = mean_k (x̄ - x_k); x̄ = OuterOpt.step(x̄, Δ)
            x_k = x̄

OuterOpt is SGD with Nesterov momentum (lr γ = algo.outer_lr, momentum μ =
algo.outer_momentum). With `overlap = true` the allreduce is started
non-blocking at the sync boundary and completed one local step later, when
x_k = x̄ + (x_k - x_s) keeps that step's progress (x_s: x_k at the boundary).

The Bernoulli draw of local step τ is a pure function of (run.seed, τ, rank)
(of (run.seed, τ) alone with `same_draws`), generated in blocks of 4096: there
is no RNG state to save, and a resume draws what an uninterrupted run draws. Collectives never
depend on the draws: every rank syncs at the same steps, so all three
algorithms are synchronous.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..comm.dense import allreduce_mean, iallreduce_sum
from ..config import ConfigError, doc
from ..optim import SGD, schedule
from .base import Algorithm, StepInfo, register
from .mixing import MixingDraws


def peak_lr(algo_cfg) -> float:
    """The largest inner learning rate the schedule reaches."""
    lr = algo_cfg.lr
    if algo_cfg.schedule == "cosine":
        lr = max(lr, algo_cfg.schedule_min_lr)
    return lr


# -- config ------------------------------------------------------------------------
@dataclass
class LocalSGDOptions:
    H: int = doc(8, "local steps between two averagings (sync interval)")
    warmup_steps: int = doc(0, "synchronous data-parallel steps before local steps start (T0)")
    overlap: bool = doc(False, "start the averaging allreduce non-blocking and apply it one local step later")

    def validate(self, cfg, world_size=None):
        if self.H < 1:
            raise ConfigError(f"algo.H must be >= 1, got {self.H}")
        if self.warmup_steps < 0:
            raise ConfigError(f"algo.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class DiLoCoOptions(LocalSGDOptions):
    H: int = doc(32, "inner steps between two outer steps (sync interval)")
    outer_lr: float = doc(0.7, "outer learning rate γ of the Nesterov SGD step on the pseudo-gradient")
    outer_momentum: float = doc(0.9, "outer Nesterov momentum μ (0 = plain outer SGD)")
    outer_schedule: str = doc("constant", "outer lr schedule over the run: constant | cosine (γ decays to 0 at the last step)")

    def validate(self, cfg, world_size=None):
        super().validate(cfg, world_size)
        if not self.outer_lr > 0:
            raise ConfigError(f"algo.outer_lr must be > 0, got {self.outer_lr}")
        if not 0 <= self.outer_momentum < 1:
            raise ConfigError(f"algo.outer_momentum must be in [0, 1), got {self.outer_momentum}")
        if self.outer_schedule not in ("constant", "cosine"):
            raise ConfigError(f"algo.outer_schedule must be constant or cosine, "
                              f"got {self.outer_schedule!r}")


@dataclass
class PALSGDOptions(DiLoCoOptions):
    p: float = doc(0.1, "probability of a mixing step (pull toward x̄, no gradient, no message); in [0, 1)")
    mix_rate: float = doc(1.0, "mixing rate η: a mixing step moves x_k by α_t·η/p of the way to x̄")
    same_draws: bool = doc(False, "draw the mixing decisions identically on all ranks (the reference code)")

    def validate(self, cfg, world_size=None):
        super().validate(cfg, world_size)
        if not 0 <= self.p < 1:
            raise ConfigError(f"algo.p must be in [0, 1), got {self.p}")
        if self.mix_rate < 0:
            raise ConfigError(f"algo.mix_rate must be >= 0, got {self.mix_rate}")
        if self.p > 0:
            c = peak_lr(cfg.algo) * self.mix_rate / self.p
            if c > 1:
                raise ConfigError(
                    f"algo.mix_rate: peak lr x mix_rate / p = {c:.4g} > 1 would overshoot x̄ "
                    f"in a mixing step; lower algo.mix_rate or algo.lr, or raise algo.p")


# -- the engine ------------------------------------------------------------------------
class PeriodicAveraging(Algorithm):
    """Shared engine of `localsgd`, `diloco` and `palsgd` (see module doc)."""

    average = False      # True: x̄ = mean x_k (local SGD); False: outer optimizer step

    def __init__(self, *args):
        super().__init__(*args)
        o, xp, x = self.opts, self.xp, self.params
        self.H, self.T0, self.overlap = o.H, o.warmup_steps, o.overlap
        self.p = getattr(o, "p", 0.0)
        self.eta = getattr(o, "mix_rate", 0.0)
        self.same_draws = getattr(o, "same_draws", False)
        self.draw = MixingDraws(self.cfg.run.seed, self.rank, self.same_draws)
        self.gamma = getattr(o, "outer_lr", 1.0)
        self.outer_kind = getattr(o, "outer_schedule", "constant")
        self.gamma_at = None
        self.sync_step = 0                   # global step of the last sync's start
        self.inner = self.make_optimizer()
        self.outer = None if self.average else SGD(
            x.size, x.dtype, xp, momentum=o.outer_momentum, nesterov=True)
        self.xbar = x.copy()                 # global model of the last sync
        self.buf = xp.zeros_like(x)          # pseudo-gradient / allreduce buffer
        self.snap = xp.zeros_like(x) if self.overlap else None   # x_s at the boundary
        self.req = None                      # in-flight Iallreduce (overlap)
        self.pending = False                 # a sync started, outer step not yet applied
        self.reduced = False                 # ... and buf already holds the mean
        self.synced = True                   # every rank holds x_k = x̄ (or identical x_k)
        self.syncs = 0
        self.mixing_steps = 0
        self.sync_wait_s = 0.0               # time blocked in sync communication
        self._consensus = None

    def plan(self, shard):
        super().plan(shard)
        # the outer lr at the global step where a sync starts
        self.gamma_at = schedule(self.outer_kind, self.gamma, total_steps=self.total_steps)

    # -- one step -------------------------------------------------------------------
    def step(self, shard) -> StepInfo:
        t = self.step_count
        if t < self.T0:
            info = self._warmup_step(shard)
        else:
            info = self._local_step(shard, t - self.T0)
        self.step_count += 1
        self._consensus = None
        return info

    def _warmup_step(self, shard):
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        allreduce_mean(self.grad, channel=self.channel)
        self.inner.step(self.params, self.grad, self.lr())
        if self.step_count + 1 == self.T0:
            self.xbar[...] = self.params
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def _local_step(self, shard, tau):
        lr = self.lr()
        mixing = self.p > 0 and self.draw(tau) < self.p
        if mixing:
            # x_k -= c (x_k - x̄): the elastic pull, paid for without data
            # (grad is the work array: buf may hold an allreduce in flight)
            c = self.params.dtype.type(lr * self.eta / self.p)
            self.xp.subtract(self.params, self.xbar, out=self.grad)
            self.grad *= c
            self.params -= self.grad
            self.mixing_steps += 1
            info = StepInfo(loss=None, samples=0, extra={"mixing": True})
        else:
            X, y, _ = shard.next_batch()
            loss = self.compute_grad(self.params, X, y, self.grad)
            self.inner.step(self.params, self.grad, lr / (1.0 - self.p))
            info = StepInfo(loss=loss, samples=int(X.shape[0]), extra={"mixing": False})
        self.synced = False
        if self.pending:
            self._complete()
        if (tau + 1) % self.H == 0:
            self._start_sync()
        return info

    # -- synchronisation ----------------------------------------------------------------
    def _start_sync(self):
        """Allreduce x_k (local SGD) or x̄ - x_k; blocking, or started for overlap."""
        if self.average:
            self.buf[...] = self.params
        else:
            self.xp.subtract(self.xbar, self.params, out=self.buf)
        self.syncs += 1
        self.sync_step = self.step_count
        if self.model.state is not None:       # e.g. BatchNorm statistics: averaged, blocking
            allreduce_mean(self.model.state, channel=self.channel)
        if self.overlap:
            self.snap[...] = self.params
            self.req = iallreduce_sum(self.buf, channel=self.channel)
            self.pending, self.reduced = True, False
        else:
            t0 = time.perf_counter()
            allreduce_mean(self.buf, channel=self.channel)
            self.sync_wait_s += time.perf_counter() - t0
            self._apply()
            self.params[...] = self.xbar
            self.synced = True

    def _wait(self):
        """Finish the in-flight allreduce: buf <- mean (idempotent)."""
        if self.pending and not self.reduced:
            t0 = time.perf_counter()
            self.req.Wait()
            self.sync_wait_s += time.perf_counter() - t0
            self.req = None
            if self.size > 1:
                self.buf /= self.size
            self.reduced = True

    def _complete(self):
        """Overlap: outer step one local step late; x_k = x̄ + (x_k - x_s)."""
        self._wait()
        self._apply()
        self.params -= self.snap
        self.params += self.xbar
        self.pending = self.reduced = False

    def _apply(self):
        """x̄ <- the averaged model, or the outer step on Δ = buf."""
        if self.average:
            self.xbar[...] = self.buf
        else:
            self.outer.step(self.xbar, self.buf, self.gamma_at(self.sync_step))

    # -- end, consensus, checkpoints ---------------------------------------------------
    def finish(self):
        """Complete a sync still in flight (x_k = x̄ then, no step since)."""
        if self.pending:
            self._complete()
            self.synced = True      # x_k = x̄ + (x_s - x_s)

    def quiesce(self):
        """Collective: complete the in-flight allreduce (its outer step stays
        pending until the next local step, exactly as without a checkpoint)."""
        self._wait()

    def consensus_params(self):
        """x̄ where every rank holds x_k = x̄; otherwise mean_k x_k.

        Collective (an allreduce booked under the phase `consensus`) between
        syncs: call it on every rank, as evaluation does."""
        if self.synced and not self.pending:
            return self.params
        if self._consensus is None:
            self._consensus = self.params.copy()
            with self.channel.phase("consensus"):
                allreduce_mean(self._consensus, channel=self.channel)
        return self._consensus

    def state_dict(self):
        self._wait()
        shared = {"params": self.xbar if self.step_count >= self.T0 else self.params,
                  "step": self.step_count, "syncs": self.syncs,
                  "pending": int(self.pending), "synced": int(self.synced),
                  "sync_step": self.sync_step}
        local = {"samples": self.samples, "x_local": self.params,
                 "mixing_steps": self.mixing_steps}
        if self.outer is not None:
            shared["outer"] = self.outer.state_dict()
        local["inner"] = self.inner.state_dict()
        if self.overlap:
            # always present (checkpoints compare key sets); meaningful while pending
            shared["pending_delta"] = self.buf      # the mean: identical on every rank
            local["snapshot"] = self.snap
        return {"shared": shared, "local": local}

    def load_state_dict(self, state, reshard=False):
        """Restore; with `reshard` every rank restarts from x̄ with fresh inner state."""
        sh, lo, xp = state["shared"], state.get("local", {}), self.xp
        self.step_count = int(sh["step"])
        self.syncs = int(sh["syncs"])
        self.sync_step = int(sh["sync_step"])
        self.xbar[...] = xp.asarray(sh["params"])
        if self.outer is not None:
            self.outer.load_state_dict(sh.get("outer", {}))
        self.pending = bool(int(sh["pending"]))
        self.reduced = self.pending
        self.req = None
        if self.pending:
            self.buf[...] = xp.asarray(sh["pending_delta"])
        if reshard:
            # x_k = x̄; a pending outer step then lands on x_s = x̄
            self.params[...] = self.xbar
            if self.pending:
                self.snap[...] = self.xbar
            self.synced = not self.pending
            return
        self.params[...] = xp.asarray(lo["x_local"])
        self.samples = int(lo["samples"])
        self.mixing_steps = int(lo["mixing_steps"])
        self.synced = bool(int(sh["synced"]))
        self.inner.load_state_dict(lo.get("inner", {}))
        if self.pending:
            self.snap[...] = xp.asarray(lo["snapshot"])

    def summary(self):
        return {"syncs": self.syncs, "sync_interval": self.H, "warmup_steps": self.T0,
                "mixing_steps_rank0": self.mixing_steps,
                "sync_wait_s_rank0": self.sync_wait_s}


@register
class LocalSGD(PeriodicAveraging):
    """Local SGD: H local steps, then x_k <- mean_k x_k."""

    name = "localsgd"
    Options = LocalSGDOptions
    average = True


@register
class DiLoCo(PeriodicAveraging):
    """DiLoCo: H inner steps, then an outer Nesterov SGD step on mean_k (x̄ - x_k)."""

    name = "diloco"
    Options = DiLoCoOptions


@register
class PALSGD(PeriodicAveraging):
    """Pseudo-asynchronous local SGD: DiLoCo plus probabilistic mixing with x̄."""

    name = "palsgd"
    Options = PALSGDOptions
