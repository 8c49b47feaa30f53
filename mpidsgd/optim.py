"""Local optimizers on flat buffers, and learning-rate schedules.

Optimizers never communicate: an algorithm hands them an already aggregated
(or local) gradient. Their state is flat arrays, so checkpoints store it as is.
"""
from __future__ import annotations

import math

from .kernels import momentum_step


# -- learning-rate schedules -----------------------------------------------------
def schedule(kind: str, base_lr: float, *, total_steps: int, warmup: int = 0,
             step_every: int = 1000, gamma: float = 0.1, min_lr: float = 0.0):
    """lr(t) for step t = 0, 1, ...: constant | warmup | cosine | step.

    warmup: linear from base_lr/warmup to base_lr over `warmup` steps, then flat.
    cosine: the same warm-up, then cosine decay to `min_lr` at `total_steps`.
    step:   base_lr * gamma ** (t // step_every).
    """
    def warm(t):
        return base_lr * (t + 1) / warmup if t < warmup else None

    if kind == "constant":
        return lambda t: base_lr
    if kind == "warmup":
        return lambda t: warm(t) or base_lr
    if kind == "cosine":
        span = max(1, total_steps - warmup)

        def cosine(t):
            w = warm(t)
            if w is not None:
                return w
            frac = min(1.0, (t - warmup) / span)
            return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * frac))
        return cosine
    if kind == "step":
        return lambda t: base_lr * gamma ** (t // step_every)
    raise ValueError(f"unknown schedule {kind!r}")


def schedule_from(algo_cfg, total_steps: int, base_lr=None):
    """The schedule the config asks for (base_lr overrides algo.lr)."""
    return schedule(algo_cfg.schedule, algo_cfg.lr if base_lr is None else base_lr,
                    total_steps=total_steps, warmup=algo_cfg.schedule_warmup,
                    step_every=algo_cfg.schedule_step_every, gamma=algo_cfg.schedule_gamma,
                    min_lr=algo_cfg.schedule_min_lr)


# -- optimizers ------------------------------------------------------------------------
class SGD:
    """SGD with heavy-ball or Nesterov momentum and L2-style weight decay.

        d = g + wd * x ;  v = mu * v + d ;  step = d + mu * v (Nesterov) or v
        x -= lr * step

    Momentum entries below the dtype's smallest normal number are flushed to
    zero (kernels.momentum_step says why).
    """

    def __init__(self, n, dtype, xp, *, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.xp = xp
        self.buf = xp.zeros(n, dtype) if momentum != 0.0 else None
        self.work = xp.empty(n, dtype)
        if self.buf is not None:     # compile (or load) the kernel now, not in step 0
            one = xp.zeros(1, dtype)
            momentum_step(one, one.copy(), one.copy(), 0.0, momentum, wd=weight_decay,
                          nesterov=nesterov, work=one.copy())

    def step(self, params, grad, lr):
        if self.buf is not None:        # one pass on the CPU; see kernels/optim.py
            momentum_step(params, grad, self.buf, lr, self.momentum, wd=self.weight_decay,
                          nesterov=self.nesterov, work=self.work)
            return
        d = grad
        if self.weight_decay:
            d = self.work
            self.xp.multiply(params, params.dtype.type(self.weight_decay), out=d)
            d += grad
        params -= params.dtype.type(lr) * d

    def state_dict(self):
        """{"momentum_buf": v}, or {} without momentum. The caller nests it
        under its own name ({"opt": ...}, {"inner": ...}) in a checkpoint."""
        return {} if self.buf is None else {"momentum_buf": self.buf}

    def load_state_dict(self, state):
        """Restore from what state_dict() gave."""
        if self.buf is not None:
            self.buf[...] = state["momentum_buf"]


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""

    def __init__(self, n, dtype, xp, *, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.b1, self.b2, self.eps, self.wd = beta1, beta2, eps, weight_decay
        self.xp = xp
        self.m = xp.zeros(n, dtype)
        self.v = xp.zeros(n, dtype)
        self.work = xp.empty(n, dtype)
        self.t = 0

    def step(self, params, grad, lr):
        xp, f = self.xp, params.dtype.type
        self.t += 1
        self.m *= f(self.b1)
        self.m += f(1 - self.b1) * grad
        self.v *= f(self.b2)
        self.v += f(1 - self.b2) * grad * grad
        c1 = 1 - self.b1 ** self.t
        c2 = 1 - self.b2 ** self.t
        if self.wd:
            params *= f(1 - lr * self.wd)
        # x -= lr * (m / c1) / (sqrt(v / c2) + eps)
        xp.sqrt(self.v, out=self.work)
        self.work *= f(1 / math.sqrt(c2))
        self.work += f(self.eps)
        xp.divide(self.m, self.work, out=self.work)
        params -= f(lr / c1) * self.work

    def state_dict(self):
        """{"adam_m": m, "adam_v": v, "adam_t": t}, nested by the caller as in SGD."""
        return {"adam_m": self.m, "adam_v": self.v, "adam_t": self.t}

    def load_state_dict(self, state):
        """Restore from what state_dict() gave."""
        self.m[...] = state["adam_m"]
        self.v[...] = state["adam_v"]
        self.t = int(state["adam_t"])


def build_optimizer(algo_cfg, n, dtype, xp, *, kind=None, momentum=None, nesterov=None,
                    weight_decay=None):
    """The local optimizer named by algo.optimizer (keywords override the config)."""
    kind = kind or algo_cfg.optimizer
    wd = algo_cfg.weight_decay if weight_decay is None else weight_decay
    if kind == "sgd":
        return SGD(n, dtype, xp,
                   momentum=algo_cfg.momentum if momentum is None else momentum,
                   nesterov=algo_cfg.nesterov if nesterov is None else nesterov,
                   weight_decay=wd)
    if kind == "adamw":
        return AdamW(n, dtype, xp, beta1=algo_cfg.beta1, beta2=algo_cfg.beta2,
                     eps=algo_cfg.eps, weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}")
