"""CentralVR / SAGA / SVRG under MPI against the serial float64 simulation of
the variance-reduction methods (tests/refs/centralvr_ref.py).

One 4-rank launch (a scenario, see tests/helpers/mpi_scenario.py): P = 1..4
on sub-communicators, single and sync modes, every method and linear model,
unequal shards (weights n_k / N, samples left out of an epoch); table-mean
invariants; one allreduce of 2d numbers per epoch; linear convergence to
1e-10 vs SGD's plateau; bit-identical resume. The scenario records every
rank's gaps to the references and its counters; each claim is a serial test.
The async mode and weak scaling are in test_centralvr_async_mpi.py.
"""
import copy

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.comm import costmodel as cm
from centralvr_runs import gap, gather_data, make, run_steps, within
from mpi_scenario import rank_hashes, run_scenario
from mpiutil import sub_comms
from refs.centralvr_ref import full_grad, simulate

CASES = [("centralvr", "logreg", {}), ("centralvr", "ridge", {}), ("centralvr", "softmax", {}),
         ("saga", "logreg", {}), ("saga", "logreg", {"sampling": "replacement"}),
         ("saga", "softmax", {"sampling": "replacement"}), ("svrg", "logreg", {}), ("svrg", "ridge", {}),
         ("svrg", "logreg", {"snapshot": "recompute"})]
E = 3


def case_key(P, algo, model, extra, mode):
    return "-".join([f"P{P}", algo, model, *(f"{k}={v}" for k, v in extra.items()), mode])


# every (P, case, mode) the simulation check runs: sync, and single on one rank
RUNS = [(P, algo, model, extra, mode) for P in (1, 2, 3, 4) for algo, model, extra in CASES
        for mode in (["sync", "single"] if P == 1 else ["sync"])]
KEYS = {case_key(*r): r for r in RUNS}


def ridge_subopt_want(alg, Xs, ys, x0):
    """Relative suboptimality of the final params against a dense solve."""
    A = np.vstack([np.hstack([X, np.ones((len(X), 1))]) for X in Xs])
    Y = np.concatenate(ys)
    xstar = np.linalg.solve(A.T @ A / len(Y) + 1e-2 * np.eye(A.shape[1]), A.T @ Y / len(Y))

    def f(x):
        return 0.5 * np.mean((A @ x - Y) ** 2) + 0.5e-2 * (x @ x)
    return (f(alg.params) - f(xstar)) / (f(x0) - f(xstar))


def mean_of_all_tables(Xs, tabs):
    """ḡ as the mean over all N samples of every rank's table."""
    return sum(np.concatenate([X.T @ T if T.ndim == 1 else (X.T @ T).ravel(),
                               np.atleast_1d(T.sum(axis=0))])
               for X, T in zip(Xs, tabs)) / sum(len(X) for X in Xs)


def observe_run(sub, algo, model, extra, mode):
    """E epochs against the simulation; this rank's gaps, counters, params."""
    P = sub.size
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
    o = {k: [] for k in ("snapshot", "running_mean", "x", "gbar_sim", "table_sim", "gbar_tables")}
    for e in range(E):
        if algo == "svrg":
            alg.begin_epoch(shard)     # the snapshot of epoch e: check it, then redo inside step
            o["snapshot"].append(gap(alg.mu, full_grad(model, alg.xs, Xs, ys, 1e-2, C_)))
            alg.samples -= alg.n_k
        for s in range(shard.steps_per_epoch):
            alg.step(shard)
            if algo == "saga" and P == 1 and e > 0:
                mean_t = np.zeros_like(alg.a)
                alg.tab.mean(mean_t)
                o["running_mean"].append(gap(alg.a, mean_t))
        o["x"].append(gap(alg.params, ref[e]["x"]))
        if algo != "svrg":
            o["gbar_sim"].append(gap(alg.gbar, ref[e]["gbar"]))
            o["table_sim"].append(gap(alg.tab.T, ref[e]["T"][sub.rank]))
            o["gbar_tables"].append(gap(alg.gbar, mean_of_all_tables(Xs, sub.allgather(alg.tab.T.copy()))))
    alg.finish()
    if model == "ridge":
        o["subopt"] = [gap(alg.final_subopt, ridge_subopt_want(alg, Xs, ys, x0))]
    o["traffic"] = [float(ch.counters.bytes.get("train", 0.0) - b0),
                   int(ch.counters.messages.get("train", 0) - m0)]
    nb, nm = cm.allreduce_booking(2 * alg.params.size * 8, P) if mode == "sync" else (0, 0)
    return o, [float(E * nb), int(E * nm)], alg.params


def observe_simulation(sub, seen):
    """Every case on sub; gaps and counters of every rank."""
    P = sub.size
    for algo, model, extra in CASES:
        for mode in (["sync", "single"] if P == 1 else ["sync"]):
            o, want, params = observe_run(sub, algo, model, extra, mode)
            seen[case_key(P, algo, model, extra, mode)] = {
                **{k: sub.allgather(v) for k, v in o.items()},
                "traffic_want": want, "params": rank_hashes(params, sub)}


def rel_norm(alg, Xs, ys, model, x0):
    return (np.linalg.norm(full_grad(model, alg.params, Xs, ys, 1e-2))
            / np.linalg.norm(full_grad(model, x0, Xs, ys, 1e-2)))


def observe_convergence(sub, model, lr):
    """centralvr for 60 epochs and sgd for 30: the relative gradient norm
    computed here from the gathered data and the one each method reports."""
    seen = {}
    for algo, epochs in (("centralvr", 60), ("sgd", 30)):
        ctx, alg, shard = make(sub, algo, model, n_per_rank=160, epochs=epochs, lr=lr, d=8,
                               seed=0, metric_every=0 if algo != "sgd" else 1)
        Xs, ys = gather_data(sub, shard)
        x0 = alg.params.copy()
        while not alg.done():
            alg.step(shard)
        alg.finish()
        seen[algo] = {"computed": sub.allgather(float(rel_norm(alg, Xs, ys, model, x0))),
                      "reported": sub.allgather(float(alg.final_rel))}
        if algo == "sgd":
            seen[algo]["history_steps"] = sub.allgather([int(h[0]) for h in alg.history])
            seen[algo]["grad_evals"] = sub.allgather(float(alg.grad_evals))
    return seen


RESUME_CASES = [("centralvr", {}), ("saga", {"sampling": "replacement"}), ("svrg", {}),
                ("centralvr", {"table": "blocks"})]


def observe_resume(sub, algo, extra):
    """Stop mid-epoch 1, run 2 more epochs; a fresh run loads the state at
    the stop and runs the same 2 epochs: this rank's differences."""
    kw = dict(mode="single" if sub.size == 1 else "sync", n_total=20 * sub.size + 1,
              epochs=4, lr=0.05, **extra)
    ctx, alg, shard = make(sub, algo, **kw)
    run_steps(alg, shard, shard.steps_per_epoch + shard.steps_per_epoch // 2)
    state = copy.deepcopy(alg.state_dict())
    data_state = copy.deepcopy(shard.state_dict())
    run_steps(alg, shard, 2 * shard.steps_per_epoch)
    ctx2, alg2, shard2 = make(sub, algo, **kw)
    alg2.load_state_dict(state)
    shard2.load_state_dict(data_state)
    run_steps(alg2, shard2, 2 * shard.steps_per_epoch)
    return {"params": gap(alg2.params, alg.params)[0], "gbar": gap(alg2.gbar, alg.gbar)[0],
            "samples": [float(alg.samples), float(alg2.samples)],
            "table": "absent" if alg.tab is None else gap(alg2.tab.T, alg.tab.T)[0]}


def observe_centralvr_4(tmp):
    """Scenario on 4 ranks: the simulation check for P = 1..4, convergence
    for P = 1 and 4, resume for P = 1 and 3."""
    seen = {"sim": {}, "conv": {}, "resume": {}}
    for P, sub in sub_comms([1, 2, 3, 4]):
        if sub != MPI.COMM_NULL:
            observe_simulation(sub, seen["sim"])
    for P, sub in sub_comms([1, 4]):
        if sub != MPI.COMM_NULL:
            for model, lr in (("logreg", 0.25), ("ridge", 0.02)):
                seen["conv"][f"P{P}-{model}"] = observe_convergence(sub, model, lr)
    for P, sub in sub_comms([1, 3]):
        if sub != MPI.COMM_NULL:
            for algo, extra in RESUME_CASES:
                key = "-".join([f"P{P}", algo, *(f"{k}={v}" for k, v in extra.items())])
                seen["resume"][key] = sub.allgather(observe_resume(sub, algo, extra))
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_centralvr_4", 4, tmp_path_factory, timeout=500)


def keys_where(cond):
    return [k for k, (P, algo, model, extra, mode) in KEYS.items() if cond(P, algo, model, mode)]


def every_rank_within(per_rank, tol=1e-12):
    return all(within(gaps, tol) for gaps in per_rank)


# ---------------------------------------------------------------- the simulation

@pytest.mark.parametrize("key", list(KEYS))
def test_params_match_the_serial_simulation_every_epoch(obs, key):
    assert every_rank_within(obs["sim"][key]["x"]), obs["sim"][key]["x"]


@pytest.mark.parametrize("key", keys_where(lambda P, a, m, mode: a != "svrg"))
def test_gbar_and_table_match_the_serial_simulation(obs, key):
    o = obs["sim"][key]
    assert every_rank_within(o["gbar_sim"]) and every_rank_within(o["table_sim"])


@pytest.mark.parametrize("key", keys_where(lambda P, a, m, mode: a != "svrg"))
def test_gbar_is_the_mean_of_every_ranks_table(obs, key):
    assert every_rank_within(obs["sim"][key]["gbar_tables"])


@pytest.mark.parametrize("key", keys_where(lambda P, a, m, mode: a == "svrg"))
def test_svrg_snapshot_gradient_is_the_full_gradient(obs, key):
    o = obs["sim"][key]["snapshot"]
    assert all(len(g) == E for g in o) and every_rank_within(o)


@pytest.mark.parametrize("key", keys_where(lambda P, a, m, mode: a == "saga" and P == 1))
def test_saga_running_mean_is_the_table_mean(obs, key):
    o = obs["sim"][key]["running_mean"]
    assert all(len(g) > 0 for g in o) and every_rank_within(o)


@pytest.mark.parametrize("key", keys_where(lambda P, a, m, mode: m == "ridge"))
def test_reported_ridge_suboptimality_is_against_the_dense_solve(obs, key):
    assert every_rank_within(obs["sim"][key]["subopt"], 1e-8)


@pytest.mark.parametrize("key", list(KEYS))
def test_params_are_identical_on_every_rank(obs, key):
    assert len(set(obs["sim"][key]["params"])) == 1


@pytest.mark.parametrize("key", keys_where(lambda P, a, m, mode: a != "svrg"))
def test_sync_exchanges_one_allreduce_of_2d_numbers_per_epoch(obs, key):
    o = obs["sim"][key]
    assert all(t == o["traffic_want"] for t in o["traffic"]), (o["traffic"], o["traffic_want"])


@pytest.mark.parametrize("case", [case_key(1, *c, "") for c in CASES])
def test_sync_on_one_rank_equals_single_mode(obs, case):
    assert obs["sim"][case + "sync"]["params"] == obs["sim"][case + "single"]["params"]


# ---------------------------------------------------------------- convergence

CONV = [f"P{P}-{m}" for P in (1, 4) for m in ("logreg", "ridge")]


@pytest.mark.parametrize("key", CONV)
@pytest.mark.parametrize("algo", ["centralvr", "sgd"])
def test_reported_final_rel_grad_norm_is_the_computed_one(obs, key, algo):
    # sgd reports it with algo.metric_every = 1
    o = obs["conv"][key][algo]
    for rep, res in zip(o["reported"], o["computed"]):
        assert abs(rep - res) <= 1e-6 * max(res, 1e-16) + 1e-15


@pytest.mark.parametrize("key", CONV)
def test_sgd_history_has_every_epoch(obs, key):
    o = obs["conv"][key]["sgd"]
    assert all(h == list(range(1, 31)) for h in o["history_steps"])
    assert o["grad_evals"] == [30.0] * len(o["grad_evals"])


@pytest.mark.parametrize("key", CONV)
def test_centralvr_converges_linearly_to_1e10_in_60_epochs(obs, key):
    assert max(obs["conv"][key]["centralvr"]["computed"]) <= 1e-10


@pytest.mark.parametrize("key", CONV)
def test_sgd_plateaus_above_1e4(obs, key):
    assert min(obs["conv"][key]["sgd"]["computed"]) > 1e-4


# ---------------------------------------------------------------- resume

@pytest.mark.parametrize("key", [f"P{P}-" + "-".join([a, *(f"{k}={v}" for k, v in x.items())])
                                 for P in (1, 3) for a, x in RESUME_CASES])
def test_resume_is_bit_identical(obs, key):
    for r in obs["resume"][key]:
        assert r["params"] == 0.0 and r["gbar"] == 0.0 and r["samples"][0] == r["samples"][1]
        assert r["table"] in ("absent", 0.0)
