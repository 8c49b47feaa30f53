"""Datasets: synthetic or from files, sharded over ranks, batched per rank.

    dataset = load_data(cfg, channel, backend)     # collective
    X, y, idx = dataset.train.next_batch()

Every rank holds a contiguous, disjoint shard of the training set (rank r
gets [r*N/P, (r+1)*N/P), or [r*S, (r+1)*S) with data.samples_per_rank = S)
and the same kind of slice of the test set, so evaluation counts can be
allreduced. Collectives (error agreement, labels, normalisation statistics,
steps per epoch) are booked under the channel phase `setup`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import synthetic
from ..comm.agree import agreed
from ..config import ConfigError
from .collective import agree_labels, agree_steps
from .files import Local, read_local
from .normalize import feature_stats, standardize
from .shard import Shard, shard_range, train_part, train_range

__all__ = ["Dataset", "Shard", "load_data", "shard_range"]


@dataclass
class Dataset:
    """What training needs to know about the data, on this rank."""

    train: Shard              # this rank's training shard
    test_X: object            # this rank's disjoint slice of the test set (backend array)
    test_y: object
    input_shape: tuple        # (d,) or (C, H, W)
    n_outputs: int            # classes; 1 for binary and regression
    task: str                 # "classification" | "binary" | "regression"
    n_train: int              # training samples over all ranks
    n_test: int               # test samples over all ranks
    classes: np.ndarray | None = None   # file labels of classes 0..C-1 (None: synthetic/regression)
    mean: np.ndarray | None = None      # normalisation statistics (None: off)
    std: np.ndarray | None = None


def generator_task(cfg, task=None) -> str:
    """The synthetic generator: data.task, or under auto the label task's kind."""
    if cfg.data.task != "auto":
        return cfg.data.task
    return "regression" if task == "regression" else "classification"


def synthetic_local(cfg, rank: int, size: int, part=None, task=None) -> Local:
    """This rank's chunks of the synthetic training and test sets; `part` =
    (data rank, data ranks) of the training split (shard.train_part)."""
    d = cfg.data
    part = part or (rank, size)
    if d.samples_per_rank > 0:       # weak scaling: a fixed shard per data rank
        n_train = d.samples_per_rank * part[1]
        r = part[0]
        lo, hi = (0, 0) if r is None else (r * d.samples_per_rank, (r + 1) * d.samples_per_rank)
    else:
        n_train = d.n_samples
        lo, hi = train_range(n_train, part)
    tlo, thi = train_range(d.n_test, part)      # the test set: over the same data ranks
    teacher = synthetic.Teacher(cfg.run.seed, generator_task(cfg, task), d.n_features, d.n_classes)
    X, y = synthetic.generate(d, cfg.run.seed, lo, hi, "train", teacher)
    tX, ty = synthetic.generate(d, cfg.run.seed, tlo, thi, "test", teacher)
    return Local(X, y, np.arange(lo, hi, dtype=np.int64), tX, ty,
                 (d.n_features,), n_train, d.n_test)


def _labels(cfg, local, channel, task):
    """(n_outputs, classes) for the label task; file labels are mapped to
    0..C-1 in place. The task, not the model, decides: binary needs exactly
    two classes, classification integer labels, regression takes any number."""
    if task == "regression":
        return 1, None
    if cfg.data.name == "synthetic":
        n = 2 if generator_task(cfg, task) == "binary" else cfg.data.n_classes
        if task == "binary" and n != 2:
            raise ConfigError(f"data.n_classes = {n} but the task is binary: set data.n_classes = 2")
        return (1 if task == "binary" else n), None
    classes = agree_labels([local.y, local.test_y], channel, "data.path")
    if task == "binary" and len(classes) != 2:
        raise ConfigError(f"data.path {cfg.data.path}: {len(classes)} classes, but the task is binary "
                          "(model.name = logreg); use a multi-class model (softmax, mlp, cnn)")
    local.y = np.searchsorted(classes, np.asarray(local.y, dtype=np.float64))
    local.test_y = np.searchsorted(classes, np.asarray(local.test_y, dtype=np.float64))
    return (1 if task == "binary" else len(classes)), classes


def load_data(cfg, channel, backend, task=None, skip: int = 0) -> Dataset:
    """Build this rank's Dataset. Collective over `channel`. The first `skip`
    ranks (a parameter server) get an empty training shard; the others split
    the training and test sets among themselves (a server scores no test
    sample: it trains no model state, such as BatchNorm statistics).

    task: the label task, "classification" | "binary" | "regression", as
    the entry point decided it from data.task and the model (startup.py);
    None takes data.task, with auto read as classification.

    Invalid data (missing or malformed file, inconsistent arrays, a shard
    smaller than one batch, labels that do not fit the task, ...) raises
    ConfigError with the same one-line message on every rank.
    """
    task = task or ("classification" if cfg.data.task == "auto" else cfg.data.task)
    part = train_part(channel.rank, channel.size, skip)
    if cfg.data.name == "synthetic":
        def reader(c, r, p, pt):
            return synthetic_local(c, r, p, pt, task)
    else:
        reader = read_local
    with channel.phase("setup"):
        local = agreed(channel, lambda: reader(cfg, channel.rank, channel.size, part))
    n_outputs, classes = _labels(cfg, local, channel, task)
    mean = std = None
    if cfg.data.normalize:
        mean, std = feature_stats(local.X, channel)
        local.X = standardize(local.X, mean, std)
        local.test_X = standardize(local.test_X, mean, std)
    steps = agree_steps(len(local.ids), cfg.data.batch_size, channel, holds=part[0] is not None)

    # cast once to the run's dtype and move to the device
    dtype = np.dtype(cfg.run.dtype)
    ydtype = dtype if task == "regression" else np.int64

    def put(a, t):
        return backend.asarray(np.ascontiguousarray(a, dtype=t))

    shard = Shard(put(local.X, dtype), put(local.y, ydtype), local.ids, cfg.data.batch_size,
                  steps, seed=cfg.run.seed, rank=part[0] or 0, backend=backend)
    return Dataset(shard, put(local.test_X, dtype), put(local.test_y, ydtype), local.input_shape,
                   n_outputs, task, local.n_train, local.n_test, classes, mean, std)
