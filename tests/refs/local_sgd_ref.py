"""Test helpers for the local SGD family: a tiny problem, the algorithm built
on any communicator, and an independent serial float64 simulation of
docs/algorithms/local-sgd.md that runs every rank's update in one process.

The simulation is written from the rules, not from mpidsgd/algorithms/local.py:
plain NumPy, heavy-ball inner momentum, Nesterov outer step, its own batch
stream per simulated rank (fresh Shards, so a mixing step that consumed a
batch would shift every later batch). Only the Bernoulli decisions come from
the run under test (they are checked separately).
"""
import math
from types import SimpleNamespace

import numpy as np

from mpidsgd.catalog import config_from_dict
from mpidsgd.algorithms import REGISTRY
from mpidsgd.comm.channel import Channel
from mpidsgd.data import Shard, shard_range
from mpidsgd.models import build_model
from mpidsgd.optim import schedule_from

N, D, K, B = 60, 6, 3, 4          # samples, features, classes, batch per rank


def problem(seed=5):
    rng = np.random.default_rng([seed, 77])
    X = rng.standard_normal((N, D))
    y = rng.integers(0, K, N).astype(np.int64)
    model = build_model("mlp", input_shape=(D,), n_outputs=K, hidden=(5,), dtype="float64")
    x0 = model.zeros() if hasattr(model, "zeros") else np.zeros(model.layout.size)
    model.init(x0, np.random.default_rng([seed, 1]))
    return X, y, model, x0


def shards(X, y, P, seed=5):
    """The P shards of a world of size P (steps per epoch agreed: the minimum)."""
    ranges = [shard_range(N, r, P) for r in range(P)]
    spe = min((hi - lo) // B for lo, hi in ranges)
    return [Shard(X[lo:hi], y[lo:hi], np.arange(lo, hi), B, spe, seed=seed, rank=r)
            for r, (lo, hi) in enumerate(ranges)]


def make_cfg(name, steps, *, lr=0.1, momentum=0.0, seed=5, optimizer="sgd", schedule=None,
             **opts):
    algo = {"name": name, "lr": lr, "momentum": momentum, "optimizer": optimizer, **opts}
    if schedule:
        algo.update(schedule)
    return config_from_dict({"run": {"seed": seed, "steps": steps, "dtype": "float64"},
                        "model": {"name": "mlp", "hidden": [5]}, "algo": algo})


def build(cfg, comm, model, x0, shard):
    """The registered algorithm on `comm`, planned for `shard`."""
    ch = Channel(comm)
    topo = SimpleNamespace(rank=comm.Get_rank(), size=comm.Get_size())
    algo = REGISTRY[cfg.algo.name](cfg, topo, _Backend(), model, x0.copy(), ch)
    algo.plan(shard)
    return algo, ch


class _Backend:
    xp = np

    def synchronize(self):
        pass


def run_steps(algo, shard, n):
    """n steps; per step: x_k copy, x̄ copy, mixing decision."""
    xs, xbars, mix = [], [], []
    for _ in range(n):
        info = algo.step(shard)
        xs.append(algo.params.copy())
        xbars.append(getattr(algo, "xbar", algo.params).copy())
        mix.append(bool(info.extra.get("mixing", False)))
    return xs, xbars, mix


def simulate(cfg, P, x0, model, shard_list, decisions):
    """Every rank's x_k after every step, per docs/algorithms/local-sgd.md.

    decisions[k][t]: True where rank k took a mixing step at global step t.
    Returns (xs[t][k], xbar[t], final x_k list after finish)."""
    a, o = cfg.algo, cfg.algo.options
    name, S = a.name, cfg.run.steps
    H, T0, overlap = o.H, o.warmup_steps, o.overlap
    p = getattr(o, "p", 0.0)
    eta = getattr(o, "mix_rate", 0.0)
    gamma = getattr(o, "outer_lr", 1.0)
    mu_out = getattr(o, "outer_momentum", 0.0)
    cosine_outer = getattr(o, "outer_schedule", "constant") == "cosine"
    lr_at = schedule_from(a, S)
    assert a.optimizer == "sgd" and a.weight_decay == 0 and not a.nesterov
    m = a.momentum
    x = [x0.astype(np.float64).copy() for _ in range(P)]
    v = [np.zeros_like(x0) for _ in range(P)]
    xbar, vout = x0.copy(), np.zeros_like(x0)
    g = np.zeros_like(x0)
    pend = None

    def grad(k):
        Xb, yb, _ = shard_list[k].next_batch()
        model.loss_grad(x[k], Xb, yb, g)
        return g.copy()

    def outer(xbar, delta, t_sync):
        if name == "localsgd":
            raise AssertionError
        nonlocal vout
        g = gamma * 0.5 * (1 + math.cos(math.pi * t_sync / S)) if cosine_outer else gamma
        vout = mu_out * vout + delta
        return xbar - g * (delta + mu_out * vout)

    def sync_value():
        if name == "localsgd":
            return sum(x) / P
        return sum(xbar - xk for xk in x) / P

    hist_x, hist_bar = [], []
    for t in range(S):
        lr = lr_at(t)
        if t < T0:
            gm = sum(grad(k) for k in range(P)) / P
            for k in range(P):
                v[k] = m * v[k] + gm
                x[k] = x[k] - lr * v[k]
            if t == T0 - 1:
                xbar = x[0].copy()
        else:
            tau = t - T0
            for k in range(P):
                if decisions[k][t]:
                    assert p > 0
                    x[k] = x[k] - (lr * eta / p) * (x[k] - xbar)
                else:
                    gk = grad(k)
                    v[k] = m * v[k] + gk
                    x[k] = x[k] - lr / (1 - p) * v[k]
            if pend is not None:
                val, xs_, ts = pend
                xbar = val if name == "localsgd" else outer(xbar, val, ts)
                x = [xbar + (x[k] - xs_[k]) for k in range(P)]
                pend = None
            if (tau + 1) % H == 0:
                val = sync_value()
                if overlap:
                    pend = (val, [xk.copy() for xk in x], t)
                else:
                    xbar = val if name == "localsgd" else outer(xbar, val, t)
                    x = [xbar.copy() for _ in range(P)]
        hist_x.append([xk.copy() for xk in x])
        hist_bar.append(xbar.copy())
    if pend is not None:                     # finish(): the last sync lands
        val, xs_, ts = pend
        xbar = val if name == "localsgd" else outer(xbar, val, ts)
        x = [xbar + (x[k] - xs_[k]) for k in range(P)]
    return hist_x, hist_bar, x


def expected_allreduces(cfg):
    """Warm-up gradient allreduces + syncs in a run of run.steps steps."""
    o, S = cfg.algo.options, cfg.run.steps
    T0 = min(o.warmup_steps, S)
    return T0 + sum(1 for tau in range(S - T0) if (tau + 1) % o.H == 0)


def close(a, b, tol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b))) <= tol * (1.0 + float(np.max(np.abs(b))))
