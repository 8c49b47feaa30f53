"""Collective evaluation: every rank scores its slice, counts are allreduced
under the channel phase `eval`."""
from __future__ import annotations

import numpy as np


def _batches(n, size):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate(model, params, X, y, *, channel, task, batch=4096) -> dict:
    """Test metrics of `params` over all ranks' slices (X, y)."""
    xp = model.xp
    loss_sum = correct = sse = 0.0
    n = int(X.shape[0])
    for sl in _batches(n, batch):
        Xb, yb = X[sl], y[sl]
        m = int(Xb.shape[0])
        loss_sum += model.loss(params, Xb, yb) * m
        pred = model.predict(params, Xb)
        if task == "regression":
            sse += float(xp.sum((pred.astype(xp.float64) - yb) ** 2))
        else:
            correct += float(xp.sum(pred == yb))
    with channel.phase("eval"):
        tot = channel.allreduce_values([loss_sum, correct, sse, n])
    count = max(tot[3], 1.0)
    out = {"test_loss": tot[0] / count}
    if task == "regression":
        out["test_mse"] = tot[2] / count
    else:
        out["test_accuracy"] = tot[1] / count
    return out


def full_train_loss(model, params, shard, *, channel, batch=4096) -> float:
    """One pass over every rank's training shard: the mean training loss."""
    loss_sum, n = 0.0, 0
    for Xb, yb, _ in shard.iter_batches(batch):
        m = int(Xb.shape[0])
        loss_sum += model.loss(params, Xb, yb) * m
        n += m
    with channel.phase("eval"):
        tot = channel.allreduce_values([loss_sum, n])
    return float(tot[0] / max(tot[1], 1.0))


def finite(value) -> bool:
    return value is None or bool(np.isfinite(value))
