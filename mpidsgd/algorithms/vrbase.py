"""What the variance-reduced methods (centralvr, saga, svrg) share: options, the
tableau step (the tableau itself: tableau.py), batch drawing, the per-epoch
weighted average and checkpoint state; the exact full gradient and its
metric are in vrgrad.py.

Each step takes one batch; a local epoch is `shard.steps_per_epoch` steps. At
the end of an epoch (and at the last step of the run) `end_epoch` exchanges
what the method exchanges. Weights w_k = n_k / N (n_k = samples of rank k's
shard, N their sum over ranks holding data) are multiplied in before an
allreduce, so w = 1.0 exactly at P = 1.

Metrics: the relative full-gradient norm ||∇f(x)|| / ||∇f(x0)|| is computed
exactly over every shard (collective, phase `metrics`, not counted as gradient
evaluations) every `algo.metric_every` epochs and at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ConfigError, doc
from ..models import MODELS, model_class
from .base import Algorithm, StepInfo
from .tableau import Tableau
from .vrgrad import ExactGradient

DRAW = 0x5A9        # stream tag: with-replacement draws and block orders


@dataclass
class VROptions:
    mode: str = doc("sync", "single (one rank) | sync (allreduce per epoch) | async (centralvr: rank 0 serves)")
    table: str = doc("auto", "tableau entries: samples (linear models: dℓ/dz per sample) | blocks "
                             "(mean gradient of fixed mini-batches, any model) | auto")
    sampling: str = doc("permutation", "batch draws: permutation (each sample once per epoch) | "
                                       "replacement (saga only, as in the SAGA paper)")
    metric_every: int = doc(1, "exact relative full-gradient norm every this many epochs (0 = only at the end)")

    modes = ("single", "sync")      # algo.mode values this algorithm runs (not a key)

    def validate(self, cfg, world_size=None):
        """The family's rules, decided alike on every rank."""
        name, m = cfg.algo.name, cfg.model.name
        if model_class(m) is not None and not capable(cfg, "stored_gradients"):
            raise ConfigError(f"algo.name = {name!r} needs per-sample derivatives, which a {m} "
                              f"model (model.name = {m!r}) does not provide; use a non-VR algorithm")
        if self.mode not in self.modes:
            raise ConfigError(f"algo.mode must be one of {' | '.join(self.modes)} for {name}, got {self.mode!r}")
        if self.table not in ("auto", "samples", "blocks"):
            raise ConfigError(f"algo.table must be auto, samples or blocks, got {self.table!r}")
        if self.table == "samples" and not capable(cfg, "per_sample_derivs"):
            linear = ", ".join(n for n, c in MODELS.items() if c.per_sample_derivs)
            raise ConfigError(f"algo.table = samples needs a linear model ({linear}); "
                              f"model.name is {m!r}: use blocks")
        if self.sampling not in ("permutation", "replacement"):
            raise ConfigError(f"algo.sampling must be permutation or replacement, got {self.sampling!r}")
        if self.sampling == "replacement" and name != "saga":
            raise ConfigError(f"algo.sampling = replacement is a saga option, not {name}'s")
        if self.metric_every < 0:
            raise ConfigError("algo.metric_every must be >= 0")
        if cfg.algo.momentum != 0 or cfg.algo.optimizer != "sgd" or cfg.algo.weight_decay != 0:
            raise ConfigError(f"algo.momentum: {name} applies its own update; momentum and "
                              "weight_decay must be 0 and optimizer sgd (use model.l2)")
        if world_size is not None:
            if self.mode == "single" and world_size != 1:
                raise ConfigError(f"algo.mode = single runs on 1 rank, not {world_size}; use sync")
            if self.mode == "async" and world_size < 2:
                raise ConfigError("algo.mode = async needs at least 2 ranks (rank 0 is the server)")


def capable(cfg, what) -> bool:
    """Whether the configured model has the capability `what` (models/base.py);
    an unknown model name has none (the model check names it)."""
    return bool(getattr(model_class(cfg.model.name), what, False))


def table_kind(cfg):
    kind = cfg.algo.options.table
    return ("samples" if capable(cfg, "per_sample_derivs") else "blocks") if kind == "auto" else kind


class VRBase(ExactGradient, Algorithm):
    """Shared driver; subclasses give update(), begin_epoch(), end_epoch()."""

    Options = VROptions
    uses_table = True
    refuses_momentum = True     # own update: the CLI drops the quickstart's momentum (defaults.py)

    def __init__(self, *args):
        super().__init__(*args)
        o = self.opts
        self.mode, self.sampling, self.metric_every = o.mode, o.sampling, o.metric_every
        self.synchronous = self.mode != "async"
        self.is_server = False
        self.kind = table_kind(self.cfg)
        self.l2 = self.model.l2
        xp, d, dt = self.xp, self.params.size, self.params.dtype
        self.gbar, self.gk, self.v = xp.zeros(d, dt), xp.zeros(d, dt), xp.zeros(d, dt)
        self.buf = xp.zeros(2 * d, dt)
        self.epoch = 0
        self.tab = None
        self.history = []
        self.final_rel = None
        self.g0 = 1.0
        self.async_totals = {}

    # -- set-up (collective) ---------------------------------------------------------
    def plan(self, shard):
        super().plan(shard)
        self.shard = shard
        holds_data = not (self.mode == "async" and self.rank == 0)
        self.n_k = shard.n if holds_data else 0
        counts = np.zeros(self.size, np.float64)
        with self.channel.phase("setup"):
            self.channel.Allgather(np.array([float(self.n_k)]), counts)
        self.N = float(counts.sum())
        self.weights = counts / self.N
        self.w = float(self.weights[self.rank])
        if holds_data and (self.uses_table or getattr(self, "stored", False)):
            self.tab = Tableau(self.kind, self.model, shard, self.xp)
        g0 = self.full_grad_norm(self.params)
        self.g0 = g0 if g0 > 0 else 1.0
        self.quad = self.quadratic_objective()
        self.f0 = self.quad(self.backend.asnumpy(self.params)) if self.quad is not None else None
        self.final_subopt = None

    # -- one step ----------------------------------------------------------------------
    def step(self, shard) -> StepInfo:
        if self.is_server:
            self.serve()
            return StepInfo()
        before = self.samples
        if shard.pos == 0:
            self.begin_epoch(shard)
        X, y, ids = self.draw(shard)
        loss = self.update(X, y, ids)
        self.step_count += 1
        self.pending = True
        extra = {}
        last = self.step_count >= self.total_steps
        if shard.pos == 0 or last:
            self.end_epoch(shard, last)
            self.epoch += 1
            self.pending = False
            if self.mode != "async" and self.metric_due() and not last:
                extra["rel_grad_norm"] = self.record_metric()
        return StepInfo(loss=loss, samples=self.samples - before, extra=extra)

    def metric_due(self):
        return self.metric_every > 0 and self.epoch % self.metric_every == 0

    def begin_epoch(self, shard):
        """Start of a local epoch (svrg: snapshot; saga: reset the running mean)."""

    def draw(self, shard):
        """(X, y, ids) of this step; moves the shard's data order by one batch."""
        B = shard.batch_size
        if self.tab is not None and self.tab.kind == "blocks":
            if self.sampling == "replacement":
                b = int(self._rng(shard).integers(self.tab.slots))
            else:
                rng = np.random.default_rng([self.cfg.run.seed, DRAW, shard.epoch, shard.rank])
                b = int(rng.permutation(self.tab.slots)[shard.pos])
            shard.advance()
            X, y = self.tab.block(b)
            return X, y, np.array([b])
        if self.sampling == "replacement":
            ids = self._rng(shard).integers(0, shard.n, size=B)
            shard.advance()
            return shard.X[ids], shard.y[ids], ids
        return shard.next_batch()

    def tableau_step(self, X, y, ids, anchor, on_fresh=None) -> float:
        """One tableau step (centralvr, saga); returns the batch loss:
            epoch 0 (fill): x -= lr (fresh + l2 x)
            later:          x -= lr (fresh - stored + anchor + l2 x)
        then `on_fresh(X, E, ids)` if given, and the fresh entries E are stored."""
        tab, v, x = self.tab, self.v, self.params
        loss, E = self.evaluate(x, X, y)
        if self.epoch == 0:
            tab.data_grad(X, E, v)
        else:
            tab.correction(X, E, ids, v)
            v += anchor
        if self.l2:
            v += self.l2 * x
        x -= self.lr() * v
        if on_fresh is not None:
            on_fresh(X, E, ids)
        tab.store(ids, E)
        return loss

    def _rng(self, shard):
        # a pure function of (seed, epoch, pos, rank): resumes exactly, no state to save
        return np.random.default_rng([self.cfg.run.seed, DRAW, shard.epoch, shard.pos, shard.rank, 1])

    def evaluate(self, x, X, y):
        """(loss, fresh entries) at x: dℓ/dz per sample, or the block's data gradient.
        Counts the samples and applies compute emulation, like compute_grad."""
        import time
        t0 = time.perf_counter() if self.compute_emu.active else 0.0
        if self.kind == "samples":
            loss, E = self.model.loss_and_derivs(x, X, y)
            if self.l2:
                loss += 0.5 * self.l2 * float(x @ x)
        else:
            E = self.xp.empty_like(x)
            loss = self.model.loss_grad(x, X, y, E)
            if self.l2:
                E -= self.l2 * x
        if self.compute_emu.active:
            self.backend.synchronize()
            self.compute_emu.delay(time.perf_counter() - t0)
        self.samples += int(X.shape[0])
        return loss, E

    # -- exchanges ---------------------------------------------------------------------
    def average(self, x, g, gbar_out):
        """(x, ḡ) <- Σ_k w_k (x_k, g_k): one allreduce of 2d numbers (sync)."""
        d = x.size
        if self.mode == "single":
            gbar_out[...] = g
            return
        buf = self.buf
        self.xp.multiply(x, self.w, out=buf[:d])
        self.xp.multiply(g, self.w, out=buf[d:])
        self.channel.Allreduce(buf)
        x[...] = buf[:d]
        gbar_out[...] = buf[d:]

    # -- end of run ------------------------------------------------------------------------
    def finish(self):
        if self.mode == "async":
            self.finish_async()
        elif getattr(self, "pending", False):
            # stopped mid-epoch (signal, time limit): average the local iterates
            self.tab.mean(self.gk) if self.tab is not None else None
            self.average(self.params, self.gk, self.gbar)
            self.pending = False
        self.final_rel = self.full_grad_norm(self.params) / self.g0
        if self.mode != "async":
            self.history.append([self.epoch, self.samples, self.final_rel])
        if self.quad is not None:
            x = self.backend.asnumpy(self.params)
            gap0 = self.f0 - self.quad.star
            self.final_subopt = (self.quad(x) - self.quad.star) / gap0 if gap0 > 0 else 0.0
        with self.channel.phase("metrics"):
            tot = self.channel.allreduce_values(
                [self.samples] + ([self.sent, self.received] if self.mode == "async" else []))
        self.grad_evals = float(tot[0]) / self.N
        if self.mode == "async":
            self.async_totals = {"async_messages_sent": int(tot[1]),
                                 "async_messages_received": int(tot[2])}

    def summary(self):
        tables = self.tab.numbers if self.tab is not None else 0
        return {"mode": self.mode, "table": self.kind if self.uses_table else None,
                "table_numbers_per_rank": tables,
                "final_rel_grad_norm": self.final_rel,
                "final_rel_suboptimality": self.final_subopt,
                "grad_evals_per_sample": getattr(self, "grad_evals", None),
                "rel_grad_norm_history": self.history}

    # -- checkpoint state ------------------------------------------------------------------
    def extra_state(self):
        return {}, {}

    def load_extra_state(self, shared, local):
        pass

    def state_dict(self):
        xs, xl = self.extra_state()
        local = {"params": self.params, "gbar": self.gbar, "samples": self.samples,
                 "step": self.step_count, "epoch": self.epoch,
                 "pending": int(getattr(self, "pending", False)),
                 # the metric history so far, so a resumed run's summary matches:
                 # a count, then rows in a buffer sized by the run's epochs, so
                 # the shape is the same in every checkpoint of this run
                 "history": self._history_buffer(),
                 **xl}
        if self.tab is not None:
            local["table"] = self.tab.T
        return {"shared": {"step": self.step_count if self.synchronous else 0, **xs},
                "local": local}

    def _history_buffer(self):
        spe = max(1, getattr(getattr(self, "shard", None), "steps_per_epoch", 1))
        rows = max(len(self.history), self.total_steps // spe + 3)
        buf = np.zeros(1 + 3 * rows, np.float64)
        buf[0] = len(self.history)
        if self.history:
            buf[1:1 + 3 * len(self.history)] = np.asarray(self.history, np.float64).ravel()
        return buf

    def load_state_dict(self, state, reshard=False):
        if reshard:
            raise ConfigError(f"checkpoint.allow_reshard: {self.name} keeps per-sample tables of "
                              "each rank's shard; resume at the world size that wrote the checkpoint")
        loc = state["local"]
        self.params[...] = self.xp.asarray(loc["params"])
        self.gbar[...] = self.xp.asarray(loc["gbar"])
        self.samples, self.step_count = int(loc["samples"]), int(loc["step"])
        self.epoch, self.pending = int(loc["epoch"]), bool(int(loc["pending"]))
        if "history" in loc:
            h = np.asarray(loc["history"], np.float64)
            rows = h[1:1 + 3 * int(h[0])].reshape(-1, 3)
            self.history = [[int(e), int(n), float(r)] for e, n, r in rows]
        if self.tab is not None:
            self.tab.T[...] = self.xp.asarray(loc["table"])
        self.load_extra_state(state["shared"], loc)

