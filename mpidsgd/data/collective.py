"""The few collective decisions of data loading, all booked under `setup`.

Each returns the same value (or raises the same ConfigError) on every rank of
the channel, so no rank ever leaves data loading alone (an error seen by one
rank only is agreed on by comm/agree.py).
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..config import ConfigError


def agree_steps(n_local: int, batch_size: int, channel, holds: bool = True) -> int:
    """Steps per epoch, the same on every rank: min over ranks of floor(n_k / B)
    (ranks that hold no training data, `holds` false, do not count).

    Raises ConfigError on every rank when some shard holds less than one batch.
    """
    big = float(2 ** 62)
    mine = [n_local // batch_size, n_local] if holds else [big, big]
    with channel.phase("setup"):
        steps, smallest = channel.allreduce_values(mine, op=MPI.MIN)
    if steps < 1:
        raise ConfigError(f"data.batch_size {batch_size} is larger than the smallest shard "
                          f"({int(smallest)} samples on some rank); lower it or use fewer ranks")
    return int(steps)


def agree_labels(ys, channel, key="data.path"):
    """Decide the label kind over all ranks' label arrays `ys`.

    Returns the sorted unique labels of all ranks (float64): class c is the
    c-th of them. A label anywhere that is not an integer (a regression
    target) is a ConfigError on every rank, as is a single class.
    """
    y = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in ys])
    with channel.phase("setup"):
        real, = channel.allreduce_values([float(np.any(y != np.floor(y)))], op=MPI.MAX)
        if real:
            raise ConfigError(f"{key}: labels are not all integers, so they are no classes; "
                              "regression needs a regression model (model.name = ridge)")
        # the union of every rank's classes: an allgather padded with NaN
        mine = np.unique(y)
        width, = channel.allreduce_values([len(mine)], op=MPI.MAX)
        send = np.full(int(width), np.nan)
        send[:len(mine)] = mine
        recv = np.empty((channel.size, int(width)))
        channel.Allgather(send, recv)
    classes = np.unique(recv[~np.isnan(recv)])
    if len(classes) < 2:
        raise ConfigError(f"{key}: every label is {classes[0]:g}; classification needs two classes or more")
    return classes
