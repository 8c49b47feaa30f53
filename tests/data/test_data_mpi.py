"""Data under MPI: disjoint and complete shards, agreed steps per epoch,
collective normalisation statistics, errors raised alike on every rank.

One launch of 5 ranks tests every world size 1..5 on sub-communicators.
Assertions are collective: a failure on one rank fails every rank.
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
from mpiutil import assert_all, sub_comms

COMM = MPI.COMM_WORLD


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


def check_world(ds, sub, n_train, n_test, batch):
    """Shards and test slices disjoint and complete; steps = min floor(n_k/B)."""
    ids = np.concatenate(sub.allgather(ds.train.ids))
    ok = np.array_equal(np.sort(ids), np.arange(n_train)) and len(ids) == n_train
    ok &= sum(sub.allgather(len(ds.test_y))) == n_test == ds.n_test
    ok &= ds.n_train == n_train
    ok &= ds.train.steps_per_epoch == min(sub.allgather(ds.train.n)) // batch
    ok &= len(set(sub.allgather(ds.train.steps_per_epoch))) == 1
    return bool(ok)


@pytest.mark.parallel(nprocs=5)
def test_shards_steps_and_statistics_for_P_1_to_5():
    folder = shared_dir()
    path, X, y = write_h5(folder)
    train_rows, test_rows = split_rows(len(X), 0.2, 0, path)
    for P, sub in sub_comms(range(1, 6)):
        if sub == MPI.COMM_NULL:
            continue
        ch = Channel(sub)

        # synthetic, raw: the shard's rows are the serial generator's rows
        cfg = Config()
        cfg.run.dtype = "float64"
        cfg.data.n_samples, cfg.data.n_test, cfg.data.n_features = 2111, 333, 6
        cfg.data.batch_size, cfg.data.normalize = 50, False
        ds = load_data(cfg, ch, Backend())
        ok = check_world(ds, sub, 2111, 333, 50)
        Xs, ys = synthetic.generate(cfg.data, 0, ds.train.ids[0], ds.train.ids[-1] + 1)
        ok &= np.array_equal(ds.train.X, Xs) and np.array_equal(ds.train.y, ys)

        # synthetic, normalised: allreduced statistics equal the serial ones
        cfg.data.normalize = True
        ds = load_data(cfg, ch, Backend())
        full, _ = synthetic.generate(cfg.data, 0, 0, 2111)
        ok &= np.allclose(ds.mean, full.mean(0), rtol=1e-12, atol=1e-14)
        ok &= np.allclose(ds.std, full.std(0), rtol=1e-12)
        ok &= ch.counters.bytes.get("train", 0.0) == 0.0   # everything under setup

        # weak scaling: samples_per_rank rows per rank, n_train = S * P
        cfg.data.samples_per_rank = 64
        ds = load_data(cfg, ch, Backend())
        ok &= check_world(ds, sub, 64 * P, 333, 50) and ds.train.ids[0] == 64 * sub.rank

        # HDF5 with a seeded test split, uneven shards (82 rows over P ranks)
        cfg = Config()
        cfg.run.dtype = "float64"
        cfg.data.name, cfg.data.path, cfg.data.batch_size = "file", path, 7
        ds = load_data(cfg, ch, Backend())
        ok &= check_world(ds, sub, len(train_rows), len(test_rows), 7)
        ok &= np.array_equal(ds.train.y, y[train_rows[ds.train.ids]])
        Xtr = X[train_rows]
        ok &= np.allclose(ds.mean, Xtr.mean(0), rtol=1e-12, atol=1e-12)
        ok &= np.allclose(ds.std, np.where(Xtr.std(0) > 0, Xtr.std(0), 1.0), rtol=1e-12)
        rows = np.rint(ds.train.X[:, 0] * ds.std[0] + ds.mean[0]).astype(int)
        ok &= np.array_equal(rows, train_rows[ds.train.ids])

        # a parameter server (skip=1) holds no training row and no test row:
        # it trains no model state (BatchNorm statistics) to score them with
        if P >= 2:
            ds = load_data(cfg, ch, Backend(), skip=1)
            held = sub.allgather((len(ds.train.ids), len(ds.test_y)))
            ok &= held[0] == (0, 0) and sum(h[1] for h in held) == len(test_rows)
            ok &= sum(h[0] for h in held) == len(train_rows)
        assert_all(ok, f"P={P}", comm=sub)
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parallel(nprocs=3)
def test_errors_are_raised_alike_on_every_rank():
    ch = Channel(COMM)

    # a failure on one rank only reaches every rank with that rank's message
    def fail_on_1():
        if COMM.rank == 1:
            raise ConfigError("data.path /x.h5: broken on rank 1")
        return COMM.rank
    try:
        agreed(ch, fail_on_1)
        msg = None
    except ConfigError as e:
        msg = str(e)
    msgs = COMM.allgather(msg)
    assert_all(msgs == ["data.path /x.h5: broken on rank 1"] * 3, f"{msgs}")

    # a shard smaller than one batch on rank 0 only (39 < 40): all ranks raise
    cfg = Config()
    cfg.data.n_samples, cfg.data.batch_size = 2 * 40 + 39, 40
    try:
        load_data(cfg, ch, Backend())
        msg = None
    except ConfigError as e:
        msg = str(e)
    msgs = COMM.allgather(msg)
    assert_all(msgs[0] is not None and "data.batch_size" in msgs[0] and len(set(msgs)) == 1, f"{msgs}")

    # a missing file: the same one-line message everywhere
    cfg = Config()
    cfg.data.name, cfg.data.path = "file", "/nonexistent/d.npz"
    try:
        load_data(cfg, ch, Backend())
        msg = None
    except ConfigError as e:
        msg = str(e)
    msgs = COMM.allgather(msg)
    assert_all(msgs == ["data.path /nonexistent/d.npz does not exist"] * 3, f"{msgs}")
