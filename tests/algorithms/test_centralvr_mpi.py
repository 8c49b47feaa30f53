"""CentralVR / SAGA / SVRG under MPI against the serial float64 simulation of
docs/algorithms/variance-reduction.md (tests/refs/centralvr_ref.py).

4-rank launch: P = 1..4 on sub-communicators, single and sync modes, every
method and linear model, unequal shards (weights n_k / N, samples left out of
an epoch); table-mean invariants; one allreduce of 2d numbers per epoch;
linear convergence to 1e-10 vs SGD's plateau; bit-identical resume.
8-rank launch: async mode for P = 2..8 (termination, every message answered,
quiesce, convergence with a 3x slower rank) and weak scaling P = 1, 2, 4, 8.
"""
import copy

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.catalog import config_from_dict
from mpidsgd.comm import costmodel as cm
from mpidsgd.topology import Topology
from mpidsgd.train import build
from refs.centralvr_ref import full_grad, simulate
from mpiutil import assert_all, sub_comms


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


CASES = [("centralvr", "logreg", {}), ("centralvr", "ridge", {}), ("centralvr", "softmax", {}),
         ("saga", "logreg", {}), ("saga", "logreg", {"sampling": "replacement"}),
         ("saga", "softmax", {"sampling": "replacement"}), ("svrg", "logreg", {}), ("svrg", "ridge", {}),
         ("svrg", "logreg", {"snapshot": "recompute"})]


@pytest.mark.parallel(nprocs=4)
def test_matches_serial_simulation_and_invariants():
    comm = MPI.COMM_WORLD
    for P, sub in sub_comms([1, 2, 3, 4], comm):
        if sub == MPI.COMM_NULL:
            continue
        for algo, model, extra in CASES:
            modes = ["sync", "single"] if P == 1 else ["sync"]
            finals = {}
            for mode in modes:
                tag = f"{algo}/{model}/{extra} P={P} {mode}"
                E = 3
                ctx, alg, shard = make(sub, algo, model, mode=mode, n_total=23 * P + P // 2 + 1,
                                       epochs=E, lr=0.05, **extra)
                Xs, ys = gather_data(sub, shard)
                C_ = None if model != "softmax" else 3
                x0 = alg.params.copy()
                ref = simulate(algo, Xs, ys, x0, model=model, lr=0.05, l2=1e-2, B=2,
                               steps=shard.steps_per_epoch, epochs=E, seed=3,
                               sampling=extra.get("sampling", "permutation"), C=C_)
                ch = ctx["channel"]
                b0, m0 = ch.counters.bytes.get("train", 0.0), ch.counters.messages.get("train", 0)
                ok, why = True, []
                for e in range(E):
                    if algo == "svrg":
                        alg.begin_epoch(shard)     # the snapshot of epoch e: check it, then redo inside step
                        g = full_grad(model, alg.xs, Xs, ys, 1e-2, C_)
                        if not close(alg.mu, g):
                            ok, why = False, why + [f"{tag} epoch {e}: snapshot gradient != full gradient"]
                        alg.samples -= alg.n_k
                    for s in range(shard.steps_per_epoch):
                        alg.step(shard)
                        if algo == "saga" and P == 1 and e > 0:
                            mean_t = np.zeros_like(alg.a)
                            alg.tab.mean(mean_t)
                            if not close(alg.a, mean_t):
                                ok, why = False, why + [f"{tag} step {s}: running mean != table mean"]
                    r = ref[e]
                    if not close(alg.params, r["x"]):
                        ok, why = False, why + [f"{tag} epoch {e}: x differs from the simulation "
                                                f"by {np.abs(alg.params - r['x']).max():.3g}"]
                    if algo != "svrg":
                        if not close(alg.gbar, r["gbar"]) or not close(alg.tab.T, r["T"][sub.rank]):
                            ok, why = False, why + [f"{tag} epoch {e}: ḡ or table differs"]
                        # ḡ is the mean over all N samples of every rank's table
                        tabs = sub.allgather(alg.tab.T.copy())
                        mean_all = sum(np.concatenate([X.T @ T if T.ndim == 1 else (X.T @ T).ravel(),
                                                       np.atleast_1d(T.sum(axis=0))])
                                       for X, T in zip(Xs, tabs)) / sum(len(X) for X in Xs)
                        if not close(alg.gbar, mean_all):
                            ok, why = False, why + [f"{tag} epoch {e}: ḡ != mean of all tables"]
                alg.finish()
                finals[mode] = alg.params.copy()
                if model == "ridge":     # relative suboptimality against a dense solve
                    A = np.vstack([np.hstack([X, np.ones((len(X), 1))]) for X in Xs])
                    Y = np.concatenate(ys)
                    xstar = np.linalg.solve(A.T @ A / len(Y) + 1e-2 * np.eye(A.shape[1]), A.T @ Y / len(Y))

                    def f(x):
                        return 0.5 * np.mean((A @ x - Y) ** 2) + 0.5e-2 * (x @ x)
                    want = (f(alg.params) - f(xstar)) / (f(x0) - f(xstar))
                    if not close(alg.final_subopt, want, 1e-8):
                        ok, why = False, why + [f"{tag}: suboptimality {alg.final_subopt} != {want}"]
                # identical parameters on every rank after the exchange
                allp = sub.allgather(alg.params.copy())
                if not all(np.array_equal(allp[0], p) for p in allp):
                    ok, why = False, why + [f"{tag}: ranks disagree"]
                # CentralVR/SAGA sync: exactly one allreduce of 2d numbers per epoch
                if algo != "svrg":
                    nb, nm = cm.allreduce_booking(2 * alg.params.size * 8, P) if mode == "sync" else (0, 0)
                    db = ch.counters.bytes.get("train", 0.0) - b0
                    dm = ch.counters.messages.get("train", 0) - m0
                    if db != E * nb or dm != E * nm:
                        ok, why = False, why + [f"{tag}: train traffic {db} B / {dm} msgs != {E} x ({nb}, {nm})"]
                assert_all(ok, "; ".join(why), comm=sub)
            if P == 1:
                assert np.array_equal(finals["sync"], finals["single"]), f"{algo}/{model}: sync P=1 != single"


def rel_norm(alg, ctx, Xs, ys, model, x0):
    return (np.linalg.norm(full_grad(model, alg.params, Xs, ys, 1e-2))
            / np.linalg.norm(full_grad(model, x0, Xs, ys, 1e-2)))


@pytest.mark.parallel(nprocs=4)
def test_linear_convergence_and_sgd_plateau():
    comm = MPI.COMM_WORLD
    for P, sub in sub_comms([1, 4], comm):
        if sub == MPI.COMM_NULL:
            continue
        for model, lr in (("logreg", 0.25), ("ridge", 0.02)):
            res = {}
            for algo, epochs in (("centralvr", 60), ("sgd", 30)):
                ctx, alg, shard = make(sub, algo, model, n_per_rank=160, epochs=epochs, lr=lr, d=8,
                                       seed=0, metric_every=0 if algo != "sgd" else 1)
                Xs, ys = gather_data(sub, shard)
                x0 = alg.params.copy()
                while not alg.done():
                    alg.step(shard)
                alg.finish()
                res[algo] = rel_norm(alg, ctx, Xs, ys, model, x0)
                # the norm each method reports (sgd with algo.metric_every = 1)
                # is the one computed here from the gathered data
                assert_all(abs(alg.final_rel - res[algo]) <= 1e-6 * max(res[algo], 1e-16) + 1e-15,
                           f"{algo}: reported final_rel_grad_norm {alg.final_rel} != {res[algo]}",
                           comm=sub)
                if algo == "sgd":
                    assert_all([h[0] for h in alg.history] == list(range(1, 31))
                               and alg.grad_evals == 30.0, f"sgd history {alg.history[:3]}...",
                               comm=sub)
            assert_all(res["centralvr"] <= 1e-10, f"{model} P={P}: centralvr reached only {res['centralvr']:.3g} "
                       "in 60 epochs", comm=sub)
            assert_all(res["sgd"] > 1e-4, f"{model} P={P}: sgd at the same step reached {res['sgd']:.3g}",
                       comm=sub)


def run_steps(alg, shard, k):
    for _ in range(k):
        alg.step(shard)


@pytest.mark.parallel(nprocs=4)
def test_resume_is_bit_identical():
    comm = MPI.COMM_WORLD
    for P, sub in sub_comms([1, 3], comm):
        if sub == MPI.COMM_NULL:
            continue
        for algo, extra in (("centralvr", {}), ("saga", {"sampling": "replacement"}), ("svrg", {}),
                            ("centralvr", {"table": "blocks"})):
            mode = "single" if P == 1 else "sync"
            kw = dict(mode=mode, n_total=20 * P + 1, epochs=4, lr=0.05, **extra)
            ctx, alg, shard = make(sub, algo, **kw)
            k = shard.steps_per_epoch + shard.steps_per_epoch // 2      # mid-epoch 1
            run_steps(alg, shard, k)
            state = copy.deepcopy(alg.state_dict())
            data_state = copy.deepcopy(shard.state_dict())
            run_steps(alg, shard, 2 * shard.steps_per_epoch)
            want = (alg.params.copy(), alg.gbar.copy(), alg.samples)
            ctx2, alg2, shard2 = make(sub, algo, **kw)
            alg2.load_state_dict(state)
            shard2.load_state_dict(data_state)
            run_steps(alg2, shard2, 2 * shard.steps_per_epoch)
            ok = (np.array_equal(alg2.params, want[0]) and np.array_equal(alg2.gbar, want[1])
                  and alg2.samples == want[2])
            if alg.tab is not None:
                ok = ok and np.array_equal(alg.tab.T, alg2.tab.T)
            assert_all(ok, f"{algo} {extra} P={P}: resumed run differs", comm=sub)


def async_invariant(alg, sub):
    """Server (x, ḡ) == Σ_k w_k (last reported x_k, ḡ_k): no report lost or doubled."""
    lx = sub.gather(alg.last_x.copy() if sub.rank else None, root=0)
    lg = sub.gather(alg.last_g.copy() if sub.rank else None, root=0)
    ok = True
    if sub.rank == 0:
        sx = sum(alg.weights[k] * lx[k] for k in range(1, sub.size))
        sg = sum(alg.weights[k] * lg[k] for k in range(1, sub.size))
        ok = close(alg.params, sx, 1e-11) and close(alg.gbar, sg, 1e-11)
    return ok


@pytest.mark.parallel(nprocs=8)
def test_async_terminates_accounts_every_message_and_converges():
    comm = MPI.COMM_WORLD
    for P, sub in sub_comms(range(2, 9), comm):
        if sub == MPI.COMM_NULL:
            continue
        E = 20
        ctx, alg, shard = make(sub, "centralvr", "logreg", mode="async", n_per_rank=60, B=1,
                               epochs=E, lr=0.2, l2=0.1, d=6, seed=1, metric_every=2)
        assert alg.synchronous is False
        spe = shard.steps_per_epoch
        # quiescent point 1, inside the fill epoch: rank 1 has reported and waits at
        # the averaged start, the other workers are mid-fill (no deadlock allowed);
        # point 2: every worker after 3.5 epochs. The server quiesces at once.
        for target in (lambda r: spe if r == 1 else spe // 2, lambda r: 3 * spe + spe // 2):
            if sub.rank:
                run_steps(alg, shard, target(sub.rank) - alg.step_count)
            alg.quiesce()
            tot = sub.allreduce(np.array([alg.sent, alg.received]))
            assert_all(tot[0] == tot[1], f"P={P}: {tot[0]} sent != {tot[1]} received at quiesce", comm=sub)
            assert_all(async_invariant(alg, sub), f"P={P}: server state != weighted last reports", comm=sub)
        while not alg.done():
            alg.step(shard)
        assert_all(async_invariant(alg, sub), f"P={P}: server state != weighted last reports (end)", comm=sub)
        alg.finish()
        s = alg.summary()
        reports = sub.bcast(alg.reports if sub.rank == 0 else None, root=0)
        ok = (s["async_messages_sent"] == s["async_messages_received"]
              and reports == (P - 1) * E                           # one report per worker epoch
              and s["async_messages_sent"] == 2 * (P - 1) * E + 2 * (P - 1))   # reports, replies, 2 markers each
        allp = sub.allgather(alg.params.copy())
        ok = ok and all(np.array_equal(allp[0], p) for p in allp) and np.isfinite(allp[0]).all()
        assert_all(ok, f"P={P}: accounting {s} reports {reports}", comm=sub)
        # converging: 20 epochs bring every P below 1e-2 and one worker below 1e-6
        want = 1e-6 if P == 2 else 1e-2
        assert_all(alg.final_rel <= want, f"P={P}: async reached only {alg.final_rel:.3g}", comm=sub)
        assert_all(s["server_stale_rel_grad_norm"] is not None or sub.rank != 0, "no stale metric", comm=sub)


@pytest.mark.parallel(nprocs=8)
def test_async_with_a_three_times_slower_rank_reaches_1e8():
    comm = MPI.COMM_WORLD
    for P, sub in sub_comms([4], comm):
        if sub == MPI.COMM_NULL:
            continue
        task = {"n_features": 6, "n_classes": 2, "batch_size": 1, "samples_per_rank": 60, "n_test": 64}
        # l2 = 1e-2 as in the other tests (was 0.1: 160 epochs at lr 0.2 ended at
        # 2e-9..2.5e-8 run to run, so 1e-8 was not a safe bound). The arrival
        # order varies run to run: 200 epochs at lr 0.3 ended at 1e-11..1e-7 in
        # eight runs, 300 epochs at 5e-15..9e-12 in nine
        cfg = config_from_dict({"run": {"seed": 1, "epochs": 300, "dtype": "float64", "eval_every": 0},
                           "data": task, "model": {"name": "logreg", "l2": 1e-2},
                           "algo": {"name": "centralvr", "mode": "async", "lr": 0.3, "metric_every": 0},
                           "comm": {"emulate": {"slow_ranks": [1], "slowdown": 3.0}}})
        ctx = build(cfg, Topology(sub))
        alg, shard = ctx["algo"], ctx["data"].train
        while not alg.done():
            alg.step(shard)
        alg.finish()
        assert_all(alg.final_rel <= 1e-8, f"async with a slow rank reached {alg.final_rel:.3g}", comm=sub)


@pytest.mark.parallel(nprocs=8)
def test_sync_weak_scaling_epochs_to_1e8():
    """Fixed samples per rank and one step: epochs to 1e-8 for P = 1, 2, 4, 8
    within ±20% of their mean (logistic, l2 = 1e-2)."""
    comm = MPI.COMM_WORLD
    epochs = {}
    for P, sub in sub_comms([1, 2, 4, 8], comm):
        if sub == MPI.COMM_NULL:
            continue
        ctx, alg, shard = make(sub, "centralvr", "logreg", n_per_rank=160, B=2, epochs=60,
                               lr=0.25, d=8, seed=0, metric_every=1)
        while not alg.done() and not (alg.history and alg.history[-1][2] <= 1e-8):
            alg.step(shard)
        hit = next((e for e, _, r in alg.history if r <= 1e-8), None)
        assert_all(hit is not None, f"P={P}: 1e-8 not reached in 60 epochs", comm=sub)
        epochs[P] = hit
    got = comm.bcast(epochs if comm.rank == 0 else None, root=0)
    mean = sum(got.values()) / len(got)
    assert all(abs(e - mean) <= 0.2 * mean for e in got.values()), f"epochs to 1e-8 by P: {got}"
