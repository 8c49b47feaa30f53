"""The Algorithm interface, the registry, and what every algorithm shares:
gradient computation with compute emulation, step budget, learning rate.

Life of an algorithm (driven by train.py):

    algo = REGISTRY[name](cfg, topo, backend, model, params, channel)
    algo.plan(shard)                         # step budget from run.steps/epochs
    while not algo.done(): info = algo.step(shard)
    algo.finish()                            # drain traffic, build consensus
    evaluate(algo.consensus_params())

State for checkpoints is `state_dict()`: {"shared": {...}, "local": {...}} of
arrays and scalars. "shared" is identical on every rank (written once);
"local" differs per rank (gathered and written under /ranks/<r>/).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..optim import build_optimizer, schedule_from

REGISTRY: dict = {}


def register(cls):
    """Class decorator: make `cls` available as algo.name = cls.name."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    REGISTRY[cls.name] = cls
    return cls


@dataclass
class StepInfo:
    """What one call of `step` did on this rank."""

    loss: float | None = None      # local training loss of the batch (None: no gradient)
    samples: int = 0               # gradient samples computed on this rank
    extra: dict = field(default_factory=dict)


class ComputeEmulation:
    """Emulated compute time per gradient, and a slowdown factor for
    straggler ranks (3.0 = gradients take three times as long there).
    Only wall time changes, never a number.

    - fixed: sleep `compute_s` after the real compute.
    - exponential: sleep an Exp(compute_s) draw after the real compute.
    - exponential_total: the whole gradient time, real compute included, is
      an Exp(compute_s) draw: sleep until start + draw, where start is when
      the gradient's computation began, or, after `chain()`, when the
      previous gradient was due (a worker whose gradient times must be
      memoryless end to end: asgd with one rank per group); a late
      gradient carries at most one mean of delay into the next. A rank whose
      real step time exceeds a twentieth of the mean warns once.

    `sleep`, `warn` and `clock` can be replaced (tests use recorders)."""

    WARN_FRACTION = 1 / 20

    def __init__(self, emu_cfg, rank: int, seed: int, *, sleep=time.sleep, warn=None,
                 clock=time.perf_counter):
        self.kind = emu_cfg.compute
        self.mean = emu_cfg.compute_s
        self.rank = rank
        self.factor = emu_cfg.slowdown if rank in emu_cfg.slow_ranks else 1.0
        self.rng = np.random.default_rng([seed, rank, 0xC0])
        self.active = self.kind != "none" or self.factor != 1.0
        self.sleep = sleep
        self.warn = warn or _warn_stderr
        self.clock = clock
        self.calls = 0
        self.warned = False
        self.due = None           # when the last gradient was due (perf_counter s)
        self.chained = None       # real time at which chain() was called

    def chain(self, now: float):
        """The next gradient's time runs from when the last one was due, so
        everything in between (the round trip to a server, late wake-ups)
        is inside the next draw. Only exponential_total chains."""
        if self.kind == "exponential_total" and self.due is not None:
            self.chained = now

    def begun(self, t0: float):
        """(real start, emulated start) of the gradient computed from `t0`."""
        real, self.chained = self.chained, None
        return (t0, t0) if real is None else (real, self.due)

    def _draw(self) -> float:
        return float(self.rng.exponential(self.mean)) if self.mean > 0 else 0.0

    def delay(self, measured_s: float, elapsed_s: float | None = None) -> float:
        """Sleep after a gradient whose real work took `measured_s` (and
        `elapsed_s` since its emulated start); returns the seconds slept."""
        self.calls += 1
        if self.kind == "exponential_total":
            return self._delay_total(measured_s, measured_s if elapsed_s is None else elapsed_s)
        extra = 0.0
        if self.kind == "fixed":
            extra = self.mean
        elif self.kind == "exponential":
            extra = self._draw()
        extra = self.factor * extra + (self.factor - 1.0) * measured_s
        if extra > 0:
            self.sleep(extra)
        return extra

    def _delay_total(self, measured_s: float, elapsed_s: float) -> float:
        # the gradient's whole time is factor * Exp(mean): sleep what is left
        total = self.factor * self._draw()
        # the first call pays one-off costs (compilation, first touch): not warned
        if (not self.warned and self.calls > 1
                and measured_s > self.WARN_FRACTION * self.factor * self.mean):
            self.warned = True
            self.warn(f"mpidsgd: warning: rank {self.rank}: real step time {measured_s:.3g} s "
                      f"exceeds 1/20 of comm.emulate.compute_s = {self.mean:g} s; the "
                      "emulated compute times are no longer exponential (raise compute_s)")
        extra = total - elapsed_s
        # due at start + total; a late gradient carries at most one mean of
        # delay into the next (a one-off stall, e.g. compilation or a
        # checkpoint, must not turn into a burst of unslept gradients)
        now = self.clock()
        self.due = max(now + extra, now - self.factor * self.mean)
        if extra > 0:
            self.sleep(extra)
        return max(extra, 0.0)


def _warn_stderr(text):
    print(text, file=sys.stderr, flush=True)


class Algorithm:
    """Base class. Subclasses set `name`, optionally `Options` and `synchronous`.

    `Options` is a dataclass of the algorithm's own keys under [algo] (a
    `doc(default, meaning)` per field) with one hook, `validate(cfg,
    world_size)`: it raises config.ConfigError naming the key for anything
    this algorithm cannot run (world_size None: rules that need it are
    skipped). It is called once on every rank before anything is built
    (catalog.validate from train.setup), so constructors check nothing.
    """

    name = ""
    Options = None
    synchronous = True        # every rank runs the same steps and collectives

    def __init__(self, cfg, topo, backend, model, params, channel):
        self.cfg, self.topo, self.backend = cfg, topo, backend
        self.model, self.params, self.channel = model, params, channel
        self.opts = cfg.algo.options
        self.xp = backend.xp
        self.rank, self.size = channel.rank, channel.size
        self.step_count = 0
        self.samples = 0
        self.total_steps = 0
        self.grad = self.xp.zeros_like(params)
        self.compute_emu = ComputeEmulation(cfg.comm.emulate, topo.rank, cfg.run.seed)
        self.lr_at = None

    @classmethod
    def data_skip(cls, cfg) -> int:
        """How many leading ranks hold no training data (a parameter server);
        the others split the training set among themselves."""
        return 0

    # -- the interface -------------------------------------------------------------
    def plan(self, shard):
        """Fix the step budget (run.steps, or run.epochs of the shard)."""
        run = self.cfg.run
        self.total_steps = run.steps or max(1, math.ceil(run.epochs * shard.steps_per_epoch))
        self.lr_at = schedule_from(self.cfg.algo, self.total_steps)

    def step(self, shard) -> StepInfo:
        raise NotImplementedError

    def done(self) -> bool:
        return self.step_count >= self.total_steps

    def finish(self):
        """Drain traffic in flight; afterwards consensus_params() is final."""

    def quiesce(self):
        """Collective on every rank: complete all traffic in flight so that
        state_dict() describes a consistent global state (no message sent and
        not yet received). A checkpoint or an agreed stop of an asynchronous
        algorithm calls it on all ranks at the same point; training may go on
        afterwards. Synchronous algorithms have nothing in flight between
        steps."""

    def consensus_params(self):
        return self.params

    def state_dict(self) -> dict:
        return {"shared": {"params": self.params, "step": self.step_count},
                "local": {"samples": self.samples}}

    def load_state_dict(self, state: dict, reshard: bool = False):
        """Restore; with `reshard` the local part is absent and stays fresh."""
        self.params[...] = self.xp.asarray(state["shared"]["params"])
        self.step_count = int(state["shared"]["step"])
        if not reshard:
            self.samples = int(state["local"]["samples"])

    def summary(self) -> dict:
        """Algorithm-specific fields for summary.json."""
        return {}

    def progress_samples(self) -> int:
        """Samples all ranks processed, as this rank estimates it (progress line)."""
        return self.samples * self.size

    def log_fields(self) -> dict:
        """Algorithm-specific fields added to every training record of
        metrics.jsonl (rank 0's view)."""
        return {}

    # -- shared helpers ---------------------------------------------------------------
    def lr(self) -> float:
        return self.lr_at(self.step_count)

    def make_optimizer(self, **overrides):
        return build_optimizer(self.cfg.algo, self.params.size, self.params.dtype, self.xp,
                               **overrides)

    def compute_grad(self, params, X, y, grad) -> float:
        """loss_grad plus emulated compute time; counts the samples."""
        t0 = time.perf_counter() if self.compute_emu.active else 0.0
        loss = self.model.loss_grad(params, X, y, grad)
        if self.compute_emu.active:
            self.backend.synchronize()
            now = time.perf_counter()
            real, start = self.compute_emu.begun(t0)
            self.compute_emu.delay(now - real, now - start)
        self.samples += int(X.shape[0])
        return loss
