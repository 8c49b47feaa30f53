"""File datasets: choose this rank's rows, split off a test set, read them.

Without data.test_path a seeded split holds out round(test_fraction * N)
samples: the permutation comes from (run.seed, SPLIT) alone, so every rank
and every world size sees the same split. Training and test rows keep file
order; rank r reads training rows [r*N/P, (r+1)*N/P) of that order, and the
same slice of the test rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ConfigError
from .formats import LibsvmSource, open_source
from .shard import train_range

SPLIT = 0x5B1   # stream tag of the train/test split


@dataclass
class Local:
    """This rank's raw part of a dataset, before labels and normalisation."""

    X: np.ndarray           # float64 (n, *input_shape)
    y: np.ndarray           # labels or targets as read
    ids: np.ndarray         # int64 indices in the training set
    test_X: np.ndarray
    test_y: np.ndarray
    input_shape: tuple
    n_train: int
    n_test: int


def input_shape_of(sample_shape, key, path):
    """(d,) for vectors, (C, H, W) for images; a 2-D sample is a 1-channel image."""
    if len(sample_shape) in (1, 3):
        return tuple(int(s) for s in sample_shape)
    if len(sample_shape) == 2:
        return (1, *(int(s) for s in sample_shape))
    raise ConfigError(f"{key} {path}: samples of shape {tuple(sample_shape)} are neither "
                      "vectors (d,) nor images (H, W) / (C, H, W)")


def split_rows(n, fraction, seed, path):
    """(train_rows, test_rows), sorted: a seeded hold-out of round(fraction*n)."""
    n_test = int(round(fraction * n))
    if not 1 <= n_test < n:
        raise ConfigError(f"data.test_fraction {fraction} leaves no test or no training "
                          f"samples of the {n} in {path}")
    perm = np.random.default_rng([seed, SPLIT]).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _check_finite(X, y, key, path):
    if not np.all(np.isfinite(X)):
        raise ConfigError(f"{key} {path}: features contain NaN or infinity")
    if np.issubdtype(np.asarray(y).dtype, np.floating) and not np.all(np.isfinite(y)):
        raise ConfigError(f"{key} {path}: labels contain NaN or infinity")


def read_local(cfg, rank: int, size: int, part=None) -> Local:
    """Open the configured files and read this rank's rows (no collectives);
    `part` = (data rank, data ranks) of the training split (shard.train_part)."""
    d = cfg.data
    src = open_source(d.path, "data.path", d.labels_path, label_column=d.label_column)
    test = open_source(d.test_path, "data.test_path", label_column=d.label_column) \
        if d.test_path else None
    if isinstance(src, LibsvmSource) and isinstance(test, LibsvmSource):
        # a sparse test file may stop short of the last feature, or go past it
        src.n_features = test.n_features = max(src.n_features, test.n_features)
    if test is not None and test.sample_shape != src.sample_shape:
        raise ConfigError(f"data.test_path {d.test_path} has samples of shape {test.sample_shape} "
                          f"but data.path {d.path} has {src.sample_shape}")
    if test is None:
        train_rows, test_rows = split_rows(src.n, d.test_fraction, cfg.run.seed, d.path)
        test, test_key, test_file = src, "data.path", d.path
    else:
        train_rows, test_rows = np.arange(src.n), np.arange(test.n)
        test_key, test_file = "data.test_path", d.test_path
    shape = input_shape_of(src.sample_shape, "data.path", d.path)
    lo, hi = train_range(len(train_rows), part or (rank, size))
    tlo, thi = train_range(len(test_rows), part or (rank, size))   # same data ranks
    X, y = src.read(train_rows[lo:hi])
    tX, ty = test.read(test_rows[tlo:thi])
    _check_finite(X, y, "data.path", d.path)
    _check_finite(tX, ty, test_key, test_file)
    return Local(X.reshape(len(X), *shape), y, np.arange(lo, hi, dtype=np.int64),
                 tX.reshape(len(tX), *shape), ty, shape, len(train_rows), len(test_rows))
