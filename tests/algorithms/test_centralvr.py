"""Serial tests of the variance-reduced methods: config errors, the tableau
against dense per-sample gradients, block tables and SAGA with duplicate draws
against the serial simulation of docs/algorithms/variance-reduction.md."""
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C

from mpidsgd.catalog import load_config, config_from_dict
from mpidsgd.algorithms.tableau import Tableau
from mpidsgd.algorithms.vrbase import DRAW
from mpidsgd.data.shard import Shard
from mpidsgd.models import MODELS, build_model
from mpidsgd.topology import Topology
from mpidsgd.train import build
from refs.centralvr_ref import derivs, grad_sum, simulate

BASE = {"run": {"epochs": 1, "dtype": "float64"}, "model": {"name": "logreg", "l2": 0.01},
        "data": {"n_classes": 2}}


def cfg_with(**algo):
    tables = {k: dict(v) for k, v in BASE.items()}
    tables["algo"] = {"name": "centralvr", **algo}
    return config_from_dict(tables)


@pytest.mark.parametrize("algo, key", [
    ({"mode": "bogus"}, "algo.mode"),
    ({"name": "saga", "mode": "async"}, "algo.mode"),
    ({"name": "svrg", "mode": "async"}, "algo.mode"),
    ({"table": "rows"}, "algo.table"),
    ({"sampling": "replacement"}, "algo.sampling"),
    ({"name": "saga", "sampling": "sometimes"}, "algo.sampling"),
    ({"metric_every": -1}, "algo.metric_every"),
    ({"momentum": 0.9}, "algo.momentum"),
    ({"optimizer": "adamw"}, "algo.momentum"),
    ({"name": "svrg", "snapshot": "sometimes"}, "algo.snapshot"),
    ({"name": "svrg", "snapshot": "stored", "table": "blocks"}, "algo.snapshot"),
    ({"snapshot": "recompute"}, "algo.snapshot"),          # an svrg key, not centralvr's
])
def test_bad_config_names_the_key(algo, key):
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        cfg_with(**algo)


@pytest.mark.parametrize("mode, size, key", [("single", 2, "algo.mode = single"),
                                             ("async", 1, "algo.mode = async")])
def test_a_mode_refuses_a_world_size_it_cannot_run(mode, size, key):
    cfg = cfg_with(mode="sync")
    cfg.algo.options.mode = mode
    with pytest.raises(C.ConfigError, match=key):
        cfg.algo.options.validate(cfg, size)


def test_a_samples_table_is_refused_for_an_mlp():
    tables = {k: dict(v) for k, v in BASE.items()}
    tables["model"] = {"name": "mlp"}
    tables["algo"] = {"name": "centralvr", "table": "samples"}
    with pytest.raises(C.ConfigError, match=r"algo\.table"):
        config_from_dict(tables)


def test_torch_model_is_refused_by_its_capability(monkeypatch):
    cfg = cfg_with()
    cfg.model.name = "torch"
    line = ("algo.name = 'centralvr' needs per-sample derivatives, which a torch model "
            "(model.name = 'torch') does not provide; use a non-VR algorithm")
    with pytest.raises(C.ConfigError) as err:
        cfg.algo.options.validate(cfg, 2)
    assert str(err.value) == line
    # the capability decides, not the name: an mlp that lacked it is refused too
    cfg.model.name = "mlp"
    cfg.algo.options.validate(cfg, 2)
    monkeypatch.setattr(MODELS["mlp"], "stored_gradients", False)
    with pytest.raises(C.ConfigError, match=r"which a mlp model \(model\.name = 'mlp'\)"):
        cfg.algo.options.validate(cfg, 2)


@pytest.mark.parametrize("name, C_", [("ridge", None), ("logreg", None), ("softmax", 3)])
def test_tableau_matches_dense_per_sample_gradients(name, C_):
    rng = np.random.default_rng(7)
    n, d, B = 12, 5, 4
    X = rng.standard_normal((n, d))
    y = rng.integers(0, C_ or 2, n).astype(np.float64) if name != "ridge" else rng.standard_normal(n)
    model = build_model(name, input_shape=(d,), n_outputs=C_ or 1, l2=0.3, dtype="float64")
    shard = Shard(X, y, np.arange(n), B, n // B)
    tab = Tableau("samples", model, shard, np)
    assert tab.T.shape == ((n,) if C_ is None else (n, C_))      # n (or n·C) numbers, not n·d
    x_old, x_new = rng.standard_normal(model.layout.size), rng.standard_normal(model.layout.size)

    def dense(x, rows):      # per-sample data gradients from loss_grad on single rows
        g = np.zeros(model.layout.size)
        out = []
        for i in rows:
            model.loss_grad(x, X[i:i + 1], y[i:i + 1], g)
            out.append(g - 0.3 * x)
        return np.array(out)
    tab.T[...] = derivs(name, x_old, X, y, C_)
    ids = np.array([3, 7, 1, 10])
    E = derivs(name, x_new, X[ids], y[ids], C_)
    out = np.zeros(model.layout.size)
    tab.correction(X[ids], E, ids, out)
    want = (dense(x_new, ids) - dense(x_old, ids)).mean(axis=0)
    assert np.allclose(out, want, rtol=1e-12, atol=1e-13)
    tab.mean(out)
    assert np.allclose(out, dense(x_old, range(n)).mean(axis=0), rtol=1e-12, atol=1e-13)
    tab.store(ids, E)
    assert np.array_equal(tab.T[ids], E)


def make_serial(algo, **opts):
    tables = {"run": {"seed": 5, "epochs": opts.pop("epochs", 3), "dtype": "float64", "eval_every": 0},
              "data": {"n_samples": opts.pop("n", 30), "n_test": 8, "n_features": 4, "n_classes": 2,
                       "batch_size": opts.pop("B", 3)},
              "model": {"name": "logreg", "l2": 0.01},
              "algo": {"name": algo, "lr": 0.1, "mode": "sync", **opts}}
    cfg = config_from_dict(tables)
    cfg.algo.options.mode = "single"
    ctx = build(cfg, Topology(MPI.COMM_SELF))
    return ctx["algo"], ctx["data"].train


def test_block_table_matches_block_simulation():
    """Fixed blocks b = positions [bB, (b+1)B), visited in a seeded block order;
    entry = the block's mean data gradient; the L2 term never stored."""
    alg, shard = make_serial("centralvr", table="blocks", n=31, B=3, epochs=3)
    X, y = np.asarray(shard.X), np.asarray(shard.y, np.float64)
    B, nb, l2, lr = 3, shard.steps_per_epoch, 0.01, 0.1
    x, gbar, T = alg.params.copy(), np.zeros(alg.params.size), np.zeros((nb, alg.params.size))
    for e in range(3):
        order = np.random.default_rng([5, DRAW, e, 0]).permutation(nb)
        for b in order:
            g = grad_sum(X[b * B:(b + 1) * B], derivs("logreg", x, X[b * B:(b + 1) * B], y[b * B:(b + 1) * B])) / B
            v = (g if e == 0 else g - T[b] + gbar) + l2 * x
            x = x - lr * v
            T[b] = g
        gbar = T.mean(axis=0)
        for _ in range(nb):
            alg.step(shard)
        assert np.allclose(alg.params, x, rtol=1e-12, atol=1e-14)
        assert np.allclose(alg.tab.T, T, rtol=1e-12, atol=1e-14)
        assert np.allclose(alg.gbar, gbar, rtol=1e-12, atol=1e-14)
    assert alg.tab.numbers == nb * alg.params.size


def test_saga_counts_each_duplicate_once():
    """With-replacement batches of 8 from 16 samples repeat ids; the running
    mean must stay the exact table mean after every step."""
    alg, shard = make_serial("saga", sampling="replacement", n=16, B=8, epochs=6)
    X, y = np.asarray(shard.X), np.asarray(shard.y, np.float64)
    ref = simulate("saga", [X], [y], alg.params.copy(), model="logreg", lr=0.1, l2=0.01, B=8,
                   steps=shard.steps_per_epoch, epochs=6, seed=5, sampling="replacement")
    dups = 0
    mean_t = np.zeros(alg.params.size)
    for e in range(6):
        for s in range(shard.steps_per_epoch):
            ids = np.random.default_rng([5, DRAW, shard.epoch, shard.pos, 0, 1]).integers(0, 16, 8)
            dups += len(ids) - len(np.unique(ids))
            alg.step(shard)
            alg.tab.mean(mean_t)
            if e > 0:
                assert np.allclose(alg.a, mean_t, rtol=1e-12, atol=1e-15)
        assert np.allclose(alg.params, ref[e]["x"], rtol=1e-12, atol=1e-15)
        assert np.allclose(alg.tab.T, ref[e]["T"][0], rtol=1e-12, atol=1e-15)
    assert dups > 0


@pytest.fixture(scope="module")
def svrg_snapshots():
    """SVRG with algo.snapshot = stored and = recompute (∇f_i(x̃) computed
    again at every inner step), 4 epochs each, and the serial simulation:
    ({snapshot: (params, gradient evaluations, table numbers)}, reference)."""
    runs = {}
    for snap in ("stored", "recompute"):
        alg, shard = make_serial("svrg", snapshot=snap, n=30, B=3, epochs=4)
        x0 = alg.params.copy()
        while not alg.done():
            alg.step(shard)
        alg.finish()
        runs[snap] = (alg.params.copy(), alg.grad_evals, alg.summary()["table_numbers_per_rank"])
    X, y = np.asarray(shard.X), np.asarray(shard.y, np.float64)
    ref = simulate("svrg", [X], [y], x0, model="logreg", lr=0.1, l2=0.01, B=3,
                   steps=shard.steps_per_epoch, epochs=4, seed=5)
    return runs, ref


def test_svrg_stored_and_recomputed_snapshots_follow_the_serial_simulation(svrg_snapshots):
    # the same iterates, float64 rounding apart
    runs, ref = svrg_snapshots
    for snap, (x, evals, numbers) in runs.items():
        assert np.allclose(x, ref[-1]["x"], rtol=1e-12, atol=1e-14), snap


def test_svrg_recompute_costs_three_gradients_per_sample_per_round_not_two(svrg_snapshots):
    runs = svrg_snapshots[0]
    assert runs["stored"][1] == 4 * 2 and runs["recompute"][1] == 4 * 3


def test_svrg_stored_keeps_n_numbers_and_recompute_none(svrg_snapshots):
    runs = svrg_snapshots[0]
    assert runs["stored"][2] == 30 and runs["recompute"][2] == 0


@pytest.mark.parametrize("suite", ["centralvr", "centralvr_rates"])
def test_vr_bench_suites_run_at_a_constant_step(suite):
    """The suites have no base job, so their runs start from the train CLI's
    quickstart (cosine schedule): each must set the constant step itself."""
    from mpidsgd.bench.train import load_suite
    from mpidsgd.train import QUICKSTART
    spec, _ = load_suite(os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "bench", f"{suite}.toml"))
    assert "base" not in spec["suite"]
    for run in spec["runs"]:
        over = spec["suite"].get("set", []) + run.get("set", [])
        if "algo.mode='async'" in over:      # async needs P >= 2; the schedule does not depend on it
            over = over + ["algo.mode='sync'"]
        cfg = load_config(None, over, base=QUICKSTART)      # what `python -m mpidsgd.train --set ...` builds
        assert cfg.algo.schedule == "constant", f"{suite}: {run['label']} runs at a {cfg.algo.schedule} step"
