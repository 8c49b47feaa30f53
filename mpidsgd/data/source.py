"""The Source interface every file reader implements, and its shared checks.

A Source has `n` samples of raw shape `sample_shape`, and `read(rows)`
returns (X float64, y as stored) for sorted row numbers. Every failure is a
one-line ConfigError naming the config key and the file; text quoted from a
file is cut to 80 characters.
"""
from __future__ import annotations

import numpy as np

from ..config import ConfigError

QUOTE = 80   # longest piece of a file quoted in an error


def one_line(err) -> str:
    """An exception as one line of at most QUOTE characters (it may quote the file)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= QUOTE else text[:QUOTE - 3] + "..."


def quote(text) -> str:
    """repr of a piece of a file, cut to QUOTE characters."""
    r = repr(text)
    return r if len(r) <= QUOTE else r[:QUOTE - 4] + "...'"


class Source:
    """A data file: `n`, `sample_shape`, `read(rows) -> (X float64, y)`."""

    fmt = "?"

    def __init__(self, path, key):
        self.path, self.key = path, key

    def fail(self, msg):
        raise ConfigError(f"{self.key} {self.path}: {msg}")

    def _check_lengths(self, nx, ny, what="y"):
        if nx != ny:
            self.fail(f"X has {nx} samples but {what} has {ny}")
        if nx == 0:
            self.fail("holds no samples")

    def read(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, *self.sample_shape)), np.empty(0, self.y_dtype)
        # one contiguous block covering the rows, then the rows inside it
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        try:
            X, y = self._block(lo, hi)
        except ConfigError:
            raise
        except MemoryError:
            self.fail(f"rows {lo}..{hi - 1} of shape {tuple(self.sample_shape)} do not fit in memory")
        except (OSError, ValueError, KeyError) as e:
            self.fail(f"cannot read rows {lo}..{hi - 1} ({one_line(e)})")
        sel = rows - lo
        return np.asarray(X[sel], dtype=np.float64), np.asarray(y[sel]).reshape(-1)


def check_arrays(src, X, y):
    """Shapes and dtypes of stored X and y; returns sample_shape."""
    numeric = (np.issubdtype(X.dtype, np.number) and not np.issubdtype(X.dtype, np.complexfloating)) \
        or X.dtype == bool
    if X.ndim < 1 or not numeric:
        src.fail(f"X must be a numeric array with one row per sample, got {X.dtype} {X.shape}")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) or \
            not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or \
            np.issubdtype(y.dtype, np.complexfloating):
        src.fail(f"y must hold one numeric label per sample, got {y.dtype} {y.shape}")
    src._check_lengths(X.shape[0], y.shape[0])
    src.y_dtype = y.dtype
    return tuple(X.shape[1:]) or (1,)
