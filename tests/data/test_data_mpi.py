"""Data under MPI: disjoint and complete shards, agreed steps per epoch,
collective normalisation statistics, errors raised alike on every rank.

One launch of 5 ranks (a scenario, see tests/helpers/mpi_scenario.py) tests
every world size 1..5 on sub-communicators and the error agreement on 3 of
them. It returns raw per-rank observations; each claim is a serial test on
them, checking every rank.
"""
import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm.agree import agreed
from mpidsgd.comm.channel import Channel
from mpidsgd.config import Config, ConfigError
from mpidsgd.data import load_data, synthetic
from mpidsgd.data.files import split_rows
from mpi_scenario import allclose_excess, run_scenario
from mpiutil import sub_comms

COMM = MPI.COMM_WORLD
PS = [str(P) for P in range(1, 6)]


def shared_dir():
    """A folder every rank sees (rank 0 creates it)."""
    path = tempfile.mkdtemp(prefix="mpidsgd-data-") if COMM.rank == 0 else None
    return COMM.bcast(path, root=0)


def write_h5(folder, n=103, d=4):
    """A small HDF5 file whose column 0 is the row number, written by rank 0."""
    path = os.path.join(folder, "d.h5")
    if COMM.rank == 0:
        rng = np.random.default_rng(7)
        X = rng.standard_normal((n, d)) * [1, 2, 3, 0][:d] + [0, 1, -1, 5][:d]
        X[:, 0] = np.arange(n)
        with h5py.File(path, "w") as f:
            f["X"], f["y"] = X, rng.integers(0, 3, n)
    COMM.Barrier()
    with h5py.File(path, "r") as f:
        return path, f["X"][:], f["y"][:]


def world(ds, sub):
    """Shard and test-slice sizes and ids of every rank."""
    return {"ids": np.concatenate(sub.allgather(ds.train.ids)).tolist(),
            "test_lens": sub.allgather(len(ds.test_y)), "n_test": ds.n_test,
            "n_train": ds.n_train, "n": sub.allgather(ds.train.n),
            "steps": sub.allgather(ds.train.steps_per_epoch)}


def diff(a, b):
    """Largest |a - b|, or None if the shapes differ."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b), initial=0.0)) if a.shape == b.shape else None


def observe_synthetic(sub, ch):
    """Raw, normalised and weak-scaling synthetic data on sub."""
    cfg = Config()
    cfg.run.dtype = "float64"
    cfg.data.n_samples, cfg.data.n_test, cfg.data.n_features = 2111, 333, 6
    cfg.data.batch_size, cfg.data.normalize = 50, False
    ds = load_data(cfg, ch, Backend())
    o = {"raw": world(ds, sub)}
    Xs, ys = synthetic.generate(cfg.data, 0, ds.train.ids[0], ds.train.ids[-1] + 1)
    o["raw_rows_diff"] = sub.allgather([diff(ds.train.X, Xs), diff(ds.train.y, ys)])
    # normalised: allreduced statistics against the serial ones
    cfg.data.normalize = True
    ds = load_data(cfg, ch, Backend())
    full, _ = synthetic.generate(cfg.data, 0, 0, 2111)
    o["stats_excess"] = sub.allgather([allclose_excess(ds.mean, full.mean(0), 1e-12),
                                       allclose_excess(ds.std, full.std(0), 1e-12)])
    o["train_bytes"] = sub.allgather(float(ch.counters.bytes.get("train", 0.0)))
    # weak scaling: samples_per_rank rows per rank
    cfg.data.samples_per_rank = 64
    ds = load_data(cfg, ch, Backend())
    o["weak"] = world(ds, sub)
    o["weak_first_ids"] = sub.allgather(int(ds.train.ids[0]))
    return o


def observe_file(sub, ch, path, X, y, train_rows):
    """HDF5 with a seeded test split (82 rows over P ranks), and with a
    parameter server (skip=1)."""
    cfg = Config()
    cfg.run.dtype = "float64"
    cfg.data.name, cfg.data.path, cfg.data.batch_size = "file", path, 7
    ds = load_data(cfg, ch, Backend())
    o = {"file": world(ds, sub)}
    Xtr = X[train_rows]
    rows = np.rint(ds.train.X[:, 0] * ds.std[0] + ds.mean[0]).astype(int)
    o["file_diff"] = sub.allgather({
        "labels": diff(ds.train.y, y[train_rows[ds.train.ids]]),
        "mean": allclose_excess(ds.mean, Xtr.mean(0), 1e-12),
        "std": allclose_excess(ds.std, np.where(Xtr.std(0) > 0, Xtr.std(0), 1.0), 1e-12),
        "rows": diff(rows, train_rows[ds.train.ids])})
    if sub.size >= 2:
        ds = load_data(cfg, ch, Backend(), skip=1)
        o["held_by_rank"] = sub.allgather((len(ds.train.ids), len(ds.test_y)))
    return o


def message_of(fn):
    """str of the ConfigError fn raises, or None."""
    try:
        fn()
    except ConfigError as e:
        return str(e)
    return None


def observe_errors(comm):
    """The messages each rank gets for three failures."""
    ch = Channel(comm)

    # a failure on one rank only
    def fail_on_1():
        if comm.rank == 1:
            raise ConfigError("data.path /x.h5: broken on rank 1")
        return comm.rank
    small = Config()     # a shard smaller than one batch on rank 0 only (39 < 40)
    small.data.n_samples, small.data.batch_size = 2 * 40 + 39, 40
    missing = Config()
    missing.data.name, missing.data.path = "file", "/nonexistent/d.npz"
    return {"one_rank": comm.allgather(message_of(lambda: agreed(ch, fail_on_1))),
            "small_shard": comm.allgather(message_of(lambda: load_data(small, ch, Backend()))),
            "missing": comm.allgather(message_of(lambda: load_data(missing, ch, Backend())))}


def observe_data(tmp):
    """Scenario on 5 ranks: data for P = 1..5, the error agreement on 3."""
    folder = shared_dir()
    path, X, y = write_h5(folder)
    train_rows, test_rows = split_rows(len(X), 0.2, 0, path)
    seen = {"n_rows": [len(train_rows), len(test_rows)]}
    for P, sub in sub_comms(range(1, 6)):
        if sub == MPI.COMM_NULL:
            continue
        ch = Channel(sub)
        seen[str(P)] = {**observe_synthetic(sub, ch),
                        **observe_file(sub, ch, path, X, y, train_rows)}
    for _, sub in sub_comms([3]):
        if sub != MPI.COMM_NULL:
            seen["errors"] = observe_errors(sub)
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_data", 5, tmp_path_factory)


def check_world(w, n_train, n_test, batch):
    """Shards and test slices disjoint and complete; steps = min floor(n_k/B)
    on every rank."""
    assert sorted(w["ids"]) == list(range(n_train)) and len(w["ids"]) == n_train
    assert sum(w["test_lens"]) == n_test == w["n_test"]
    assert w["n_train"] == n_train
    assert w["steps"] == [min(w["n"]) // batch] * len(w["n"])


@pytest.mark.parametrize("P", PS)
def test_synthetic_shards_are_disjoint_complete_with_agreed_steps(obs, P):
    check_world(obs[P]["raw"], 2111, 333, 50)


@pytest.mark.parametrize("P", PS)
def test_synthetic_shard_rows_are_the_serial_generators_rows(obs, P):
    assert obs[P]["raw_rows_diff"] == [[0.0, 0.0]] * int(P)


@pytest.mark.parametrize("P", PS)
def test_normalisation_statistics_equal_the_serial_ones(obs, P):
    for mean_excess, std_excess in obs[P]["stats_excess"]:
        assert mean_excess <= 1e-14 and std_excess <= 1e-8


@pytest.mark.parametrize("P", PS)
def test_loading_books_nothing_under_train(obs, P):
    assert obs[P]["train_bytes"] == [0.0] * int(P)


@pytest.mark.parametrize("P", PS)
def test_weak_scaling_gives_each_rank_samples_per_rank_rows(obs, P):
    check_world(obs[P]["weak"], 64 * int(P), 333, 50)
    assert obs[P]["weak_first_ids"] == [64 * r for r in range(int(P))]


@pytest.mark.parametrize("P", PS)
def test_file_shards_are_disjoint_complete_with_agreed_steps(obs, P):
    check_world(obs[P]["file"], *obs["n_rows"], 7)


@pytest.mark.parametrize("P", PS)
def test_file_shards_hold_their_rows_labels_and_statistics(obs, P):
    for d in obs[P]["file_diff"]:
        assert d["labels"] == 0.0 and d["rows"] == 0.0
        assert d["mean"] <= 1e-12 and d["std"] <= 1e-8


@pytest.mark.parametrize("P", PS[1:])
def test_parameter_server_holds_no_training_or_test_row(obs, P):
    # it trains no model state (BatchNorm statistics) to score them with
    held = obs[P]["held_by_rank"]
    n_train, n_test = obs["n_rows"]
    assert held[0] == [0, 0] and sum(h[1] for h in held) == n_test
    assert sum(h[0] for h in held) == n_train


def test_a_failure_on_one_rank_reaches_every_rank_with_its_message(obs):
    assert obs["errors"]["one_rank"] == ["data.path /x.h5: broken on rank 1"] * 3


def test_a_shard_smaller_than_a_batch_on_one_rank_fails_every_rank(obs):
    msgs = obs["errors"]["small_shard"]
    assert msgs[0] is not None and "data.batch_size" in msgs[0] and len(set(msgs)) == 1


def test_a_missing_file_gives_the_same_message_everywhere(obs):
    assert obs["errors"]["missing"] == ["data.path /nonexistent/d.npz does not exist"] * 3
