"""Independent float64 numpy simulation of CentralVR-Sync (docs/algorithms/variance-reduction.md)
on exactly the shards and sample orders the implementation sees, next to the
implementation itself: the evidence behind "Sync at P > 1" in docs/results/variance-reduction.md.

    mpiexec -n 2 python tests/refs/centralvr_sync_sim.py --lr 0.025 --epochs 30 --compare
    mpiexec -n 2 python tests/refs/centralvr_sync_sim.py --lr 0.025 --same-shard
    mpiexec -n 2 python tests/refs/centralvr_sync_sim.py --lr 0.025 --l2 0.1 --serial
    mpiexec -n 2 python tests/refs/centralvr_sync_sim.py --saga --lr 0.0125 --compare
    python tests/refs/centralvr_sync_sim.py --lr 0.025 --split 8

Task: the rates suite (jobs/bench/centralvr_rates.toml): logistic regression,
2000 synthetic samples per rank x 20 features, batch 1, constant step. Every
rank builds its shard with the package (as `python -m mpidsgd.train` does);
rank 0 gathers them and runs the simulation, written from the update rule alone:

    epoch 0:   x_k -= lr (∇f_i(x_k) + l2 x_k);                 T_k[i] = ∇f_i(x_k)
    epoch >= 1: x_k -= lr (∇f_i(x_k) - T_k[i] + ḡ + l2 x_k);    T_k[i] = ∇f_i(x_k)
    end of epoch: x = Σ w_k x_k, ḡ = Σ w_k mean(T_k), w_k = n_k / N

Options: --compare also runs the implementation (one allreduce per epoch) and
prints max |x_impl - x_sim| per epoch; --same-shard gives every rank rank 0's
shard (no data heterogeneity, only different sample orders); --serial also
runs the same data on one simulated rank (all shards concatenated, P = 1);
--split p simulates p ranks holding contiguous parts of one rank's shard;
--diag prints max_k ||mean(T_k) - ∇f_k(x)|| / ||∇f(x0)||: how far each rank's
stored table mean is from its own data gradient at the averaged x.
"""
import argparse

import numpy as np
from mpi4py import MPI

from mpidsgd import config as C
from mpidsgd.data.shard import SHUFFLE
from mpidsgd.topology import Topology
from mpidsgd.train import build


def sig(t):
    return 1.0 / (1.0 + np.exp(-t))


def simulate(As, ys, orders, lr, l2, epochs, diag=False, saga=False):
    """rel. gradient norm after each epoch (and the --diag series). As[k]: rows [x_i, 1].
    saga: the documented sync SAGA instead, a running mean a (reset to ḡ at each
    epoch start) in place of ḡ, a += (new - old) / n_k after each step."""
    P, n = len(As), [len(A) for A in As]
    N = sum(n)
    w = [m / N for m in n]

    def grad(x):
        return sum(A.T @ (sig(A @ x) - y) for A, y in zip(As, ys)) / N + l2 * x
    x, gbar = np.zeros(As[0].shape[1]), np.zeros(As[0].shape[1])
    T = [np.zeros(m) for m in n]
    g0 = np.linalg.norm(grad(x))
    hist, dist, xs = [], [], []
    for e in range(epochs):
        xk, gk = [], []
        for r in range(P):
            xr, A, y, Tr, a = x.copy(), As[r], ys[r], T[r], gbar.copy()
            for i in orders(e, r):
                D = sig(A[i] @ xr) - y[i]
                v = A[i] * D if e == 0 else A[i] * (D - Tr[i]) + (a if saga else gbar)
                xr = xr - lr * (v + l2 * xr)
                if saga and e > 0:
                    a = a + A[i] * (D - Tr[i]) / n[r]
                Tr[i] = D
            xk.append(xr)
            gk.append(A.T @ Tr / n[r])
        x = sum(wr * v for wr, v in zip(w, xk))
        gbar = sum(wr * v for wr, v in zip(w, gk))
        hist.append(np.linalg.norm(grad(x)) / g0)
        xs.append(x.copy())
        if diag:
            dist.append(max(np.linalg.norm(gk[r] - As[r].T @ (sig(As[r] @ x) - ys[r]) / n[r])
                            for r in range(P)) / g0)
    return hist, dist, xs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=0.025)
    ap.add_argument("--saga", action="store_true", help="sync SAGA (permutation sampling) instead")
    ap.add_argument("--l2", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n", type=int, default=2000, help="samples per rank")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--same-shard", action="store_true")
    ap.add_argument("--serial", action="store_true")
    ap.add_argument("--diag", action="store_true")
    ap.add_argument("--split", type=int, default=0,
                    help="run on one rank and simulate this many ranks, each holding a contiguous "
                         "part of the shard (n in total split over p ranks)")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    cfg = C.from_dict({"run": {"seed": 0, "epochs": a.epochs, "dtype": "float64", "eval_every": 0},
                       "data": {"n_features": 20, "n_classes": 2, "samples_per_rank": a.n,
                                "n_test": 512, "batch_size": 1},
                       "model": {"name": "logreg", "l2": a.l2},
                       "algo": {"name": "saga" if a.saga else "centralvr", "lr": a.lr, "momentum": 0.0,
                                "schedule": "constant", "metric_every": 1}})
    ctx = build(cfg, Topology(comm))
    alg, shard = ctx["algo"], ctx["data"].train
    parts = comm.gather((np.asarray(shard.X, np.float64), np.asarray(shard.y, np.float64)), root=0)
    x_impl = []
    if a.compare:
        while not alg.done():
            alg.step(shard)
            if shard.pos == 0:
                x_impl.append(np.asarray(alg.params, np.float64).copy())
        alg.finish()
    if comm.rank:
        return
    P, seed = comm.size, cfg.run.seed
    if a.same_shard:
        parts = [parts[0]] * P
    if a.split:
        X, y = parts[0]
        cut = np.array_split(np.arange(len(y)), a.split)
        parts, P = [(X[c], y[c]) for c in cut], a.split
    As = [np.hstack([X, np.ones((len(X), 1))]) for X, _ in parts]
    ys = [y for _, y in parts]

    def orders(e, r):       # the shard's data order: Shard.permutation(epoch) of rank r
        return np.random.default_rng([seed, SHUFFLE, e, r]).permutation(len(As[r]))
    hist, dist, xs = simulate(As, ys, orders, a.lr, a.l2, a.epochs, a.diag, a.saga)

    def fmt(h):
        return " ".join(f"{v:.1e}" for v in h)
    tail = (hist[-1] / hist[-11]) ** 0.1 if len(hist) > 10 else float("nan")
    print(f"sim {'saga' if a.saga else 'centralvr'} P={P} lr={a.lr} l2={a.l2}{' same shard' if a.same_shard else ''}: rel. gradient norm "
          f"per epoch\n  {fmt(hist)}\n  rate per epoch over the last 10: {tail:.3f}")
    if a.diag:
        print(f"  max_k ||mean(T_k) - grad f_k(x)|| / ||grad f(x0)||:\n  {fmt(dist)}")
    if a.compare:
        diff = [float(np.abs(u - v).max()) for u, v in zip(x_impl, xs)]
        print(f"implementation vs simulation, max |x_impl - x_sim| over epochs: {max(diff):.2g}")
        print(f"implementation: {fmt([r for _, _, r in alg.history])}")
    if a.serial:
        A1, y1 = [np.vstack(As)], [np.concatenate(ys)]

        def order1(e, r):
            return np.random.default_rng([seed, SHUFFLE, e, r]).permutation(len(A1[0]))
        h1, _, _ = simulate(A1, y1, order1, a.lr, a.l2, a.epochs, saga=a.saga)
        print(f"sim P=1 on the same {len(y1[0])} samples: {fmt(h1)}")


if __name__ == "__main__":
    main()
