"""CentralVR / SAGA / SVRG runs for the MPI tests: a run built on a
sub-communicator (float64), every rank's shard gathered, closeness with a
relative tolerance, and the raw gap behind it for scenario observations."""
import numpy as np

from mpidsgd.catalog import config_from_dict
from mpidsgd.topology import Topology
from mpidsgd.train import build


def make(sub, algo, model="logreg", *, mode="sync", n_per_rank=None, n_total=None, B=2,
         epochs=3, lr=0.1, l2=1e-2, d=6, classes=3, seed=3, **extra):
    """Build a run on `sub` (float64); returns (ctx, algo, shard)."""
    task = "regression" if model == "ridge" else "classification"
    data = {"n_features": d, "n_classes": 2 if model == "logreg" else classes, "task": task,
            "batch_size": B, "n_test": 16 * sub.size}
    if n_per_rank:
        data["samples_per_rank"] = n_per_rank
    else:
        data["n_samples"] = n_total
    algo_t = {"name": algo, "lr": lr, **extra}
    if algo != "sgd":
        algo_t["mode"] = "sync" if mode == "single" else mode
    cfg = config_from_dict({"run": {"seed": seed, "epochs": epochs, "dtype": "float64", "eval_every": 0},
                       "data": data, "model": {"name": model, "l2": l2}, "algo": algo_t})
    if mode == "single":          # the world-size check sees COMM_WORLD; this run is on P = 1
        cfg.algo.options.mode = "single"
    ctx = build(cfg, Topology(sub))
    return ctx, ctx["algo"], ctx["data"].train


def gather_data(sub, shard):
    parts = sub.allgather((np.asarray(shard.X, np.float64), np.asarray(shard.y)))
    return [p[0] for p in parts], [np.asarray(p[1], np.float64) for p in parts]


def close(a, b, tol=1e-12):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.abs(a - b).max(initial=0) <= tol * max(1.0, np.abs(b).max(initial=0)))


def gap(a, b):
    """[max |a - b|, max(1, max |b|)], or [None, .] if the shapes differ:
    close(a, b, tol) is gap[0] <= tol * gap[1]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = float(np.abs(a - b).max(initial=0)) if a.shape == b.shape else None
    return [d, max(1.0, float(np.abs(b).max(initial=0)))]


def within(gaps, tol=1e-12):
    """close() held for every recorded gap."""
    return all(d is not None and d <= tol * scale for d, scale in gaps)


def run_steps(alg, shard, k):
    for _ in range(k):
        alg.step(shard)
