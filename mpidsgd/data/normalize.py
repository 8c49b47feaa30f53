"""Feature standardisation with statistics of the whole training set.

Vectors (n, d) are standardised per feature; images (n, C, H, W) per channel
(one mean and std over all pixels of a channel, not per pixel). The
statistics are computed collectively in float64 in two passes (a sum for the
mean, then a sum of squared deviations), each one allreduce booked under
`setup`; the two-pass form keeps the variance exact for nearly constant
features, where the sum-of-squares shortcut cancels. A zero std becomes 1.
"""
from __future__ import annotations

import numpy as np

TINY_STD = 1e-12   # a std below this (relative to the scale of the mean) counts as 0


def _axes(X):
    """Axes the statistics reduce over, and the shape they broadcast as."""
    if X.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    return (0,), (1, -1)


def feature_stats(X, channel):
    """(mean, std) float64 of the training set whose local part is `X`.

    Collective: every rank calls it with its own shard (possibly empty).
    """
    X = np.asarray(X, dtype=np.float64)
    axes, _ = _axes(X)
    k = X.shape[1]
    with channel.phase("setup"):
        buf = np.concatenate([[X.size // k], X.sum(axis=axes).reshape(k)])
        channel.Allreduce(buf)
        count, mean = buf[0], buf[1:] / max(buf[0], 1.0)
        dev = X - mean.reshape(_axes(X)[1])   # second pass: exact variance
        sq = np.ascontiguousarray((dev * dev).sum(axis=axes).reshape(k))
        channel.Allreduce(sq)
    std = np.sqrt(sq / max(count, 1.0))
    std[std <= TINY_STD * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


def standardize(X, mean, std):
    """(X - mean) / std, float64, feature- or channel-wise as `feature_stats`."""
    shape = _axes(X)[1]
    return (np.asarray(X, dtype=np.float64) - mean.reshape(shape)) / std.reshape(shape)
