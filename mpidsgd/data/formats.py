"""File readers: .npz, HDF5, LIBSVM/svmlight text and IDX (MNIST), plain or gzip.

Every reader is a Source: `n` samples of raw shape `sample_shape`, and
`read(rows)` returning (X float64, y as stored) for sorted row numbers.
HDF5 and uncompressed IDX read only the block of rows asked for, so a rank
touches only its own part of the file; .npz, gzip and text are read whole
(their formats allow nothing else). Every failure is a one-line ConfigError
naming the config key and the file.
"""
from __future__ import annotations

import gzip
import os
import re
import zipfile

import numpy as np

from ..config import ConfigError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _one_line(err) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
        except (OSError, ValueError, KeyError) as e:
            self.fail(f"cannot read rows {lo}..{hi - 1} ({_one_line(e)})")
        sel = rows - lo
        return np.asarray(X[sel], dtype=np.float64), np.asarray(y[sel]).reshape(-1)


def _check_arrays(src, X, y):
    """Shapes and dtypes of stored X and y; returns sample_shape."""
    if X.ndim < 1 or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        src.fail(f"X must be a numeric array with one row per sample, got {X.dtype} {X.shape}")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) or \
            not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        src.fail(f"y must hold one numeric label per sample, got {y.dtype} {y.shape}")
    src._check_lengths(X.shape[0], y.shape[0])
    src.y_dtype = y.dtype
    return tuple(X.shape[1:]) or (1,)


class NpzSource(Source):
    fmt = "npz"

    def __init__(self, path, key):
        super().__init__(path, key)
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("X", "y") if k not in z.files]
                if missing:
                    self.fail(f"no array {missing[0]!r} (arrays: {sorted(z.files)})")
                self.X, self.y = z["X"], z["y"]
        except ConfigError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            self.fail(f"cannot read as .npz ({_one_line(e)})")
        self.sample_shape = _check_arrays(self, self.X, self.y)
        self.n = self.X.shape[0]

    def _block(self, lo, hi):
        return self.X[lo:hi].reshape(hi - lo, *self.sample_shape), self.y[lo:hi]


class H5Source(Source):
    fmt = "hdf5"

    def __init__(self, path, key):
        super().__init__(path, key)
        with self._open() as f:
            missing = [k for k in ("X", "y") if not isinstance(f.get(k), _h5py().Dataset)]
            if missing:
                self.fail(f"no dataset {missing[0]!r} (keys: {sorted(f.keys())})")
            X, y = f["X"], f["y"]
            self.sample_shape = _check_arrays(self, X, y)
            self.n = X.shape[0]

    def _open(self):
        h5py = _h5py()
        try:
            try:   # no file locks: many ranks read at once, often on NFS/Lustre
                return h5py.File(self.path, "r", locking=False)
            except TypeError:
                return h5py.File(self.path, "r")
        except OSError as e:
            self.fail(f"cannot read as HDF5 ({_one_line(e)})")

    def _block(self, lo, hi):
        with self._open() as f:
            return f["X"][lo:hi].reshape(hi - lo, *self.sample_shape), f["y"][lo:hi]


def _h5py():
    import h5py
    return h5py


def _read_bytes(path, compressed):
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        return f.read()


class LibsvmSource(Source):
    """`label idx:val ...` lines, 1-based indices, '#' comments; densified on read.

    Every rank parses the whole file; `n_features` is the largest index seen,
    and can be raised (to agree with a test file) before reading.
    """

    fmt = "libsvm"

    def __init__(self, path, key, compressed=False):
        super().__init__(path, key)
        try:
            text = _read_bytes(path, compressed).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            self.fail(f"cannot read as LIBSVM text ({_one_line(e)})")
        labels, feats, counts, linenos = [], [], [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            body = line.split("#", 1)[0].split()
            if not body:
                continue
            toks = body[1:]
            if toks and toks[0].startswith("qid:"):
                toks = toks[1:]
            labels.append(body[0])
            feats.extend(toks)
            counts.append(len(toks))
            linenos.append(lineno)
        if not labels:
            self.fail("holds no samples")
        self.y = self._numbers(labels, linenos, "label")
        idx, self.vals = self._pairs(feats, counts, linenos)
        if len(idx) and (np.any(idx != np.floor(idx)) or idx.min() < 1):
            bad = int(np.flatnonzero((idx != np.floor(idx)) | (idx < 1))[0])
            self.fail(f"line {np.repeat(linenos, counts)[bad]}: feature index must be an integer >= 1")
        self.cols = idx.astype(np.int64) - 1
        self.rows = np.repeat(np.arange(len(labels), dtype=np.int64), counts)
        self.n = len(labels)
        self.y_dtype = np.dtype(np.float64)
        self.n_features = int(self.cols.max()) + 1 if len(self.cols) else 1

    def _pairs(self, feats, counts, linenos):
        """(indices, values) of all `idx:val` tokens, parsed in bulk."""
        row_lines = np.repeat(np.asarray(linenos, dtype=np.int64), counts)
        # exactly one ':' per token and two non-empty halves, else name the token
        ones = np.char.count(np.array(feats, dtype=str), ":") == 1 if feats else np.ones(0, bool)
        parts = " ".join(feats).replace(":", " ").split()
        if not ones.all() or len(parts) != 2 * len(feats):
            for tok, ln in zip(feats, row_lines):
                a, sep, b = tok.partition(":")
                if not a or not b or ":" in b:
                    self.fail(f"line {ln}: expected idx:value, got {tok!r}")
            self.fail("malformed idx:value tokens")
        return (self._numbers(parts[0::2], row_lines, "index"),
                self._numbers(parts[1::2], row_lines, "value"))

    def _numbers(self, strings, linenos, what):
        try:
            out = np.array(strings, dtype=np.float64)
        except ValueError:
            for s, ln in zip(strings, linenos):
                try:
                    float(s)
                except ValueError:
                    self.fail(f"line {ln}: {what} {s!r} is not a number")
            raise
        if not np.all(np.isfinite(out)):
            self.fail(f"line {linenos[int(np.flatnonzero(~np.isfinite(out))[0])]}: non-finite {what}")
        return out

    @property
    def sample_shape(self):
        return (self.n_features,)

    def _block(self, lo, hi):
        keep = (self.rows >= lo) & (self.rows < hi)
        X = np.zeros((hi - lo, self.n_features))
        X[self.rows[keep] - lo, self.cols[keep]] = self.vals[keep]
        return X, self.y[lo:hi]


class IdxSource(Source):
    """MNIST-format images + labels; unsigned-byte images scaled to [0, 1]."""

    fmt = "idx"

    def __init__(self, path, key, labels_path="", labels_key="data.labels_path"):
        super().__init__(path, key)
        if not labels_path:
            labels_path = sibling_labels(path)
            if labels_path is None or not os.path.exists(labels_path):
                self.fail(f"no labels file found next to the IDX images "
                          f"(looked for {labels_path}); set {labels_key}")
        elif not os.path.exists(labels_path):
            raise ConfigError(f"{labels_key} {labels_path} does not exist")
        self.images = _idx_array(path, key)
        self.labels = _idx_array(labels_path, labels_key)
        if self.labels.ndim != 1:
            raise ConfigError(f"{labels_key} {labels_path}: labels must be 1-D, "
                              f"got shape {self.labels.shape}")
        self._check_lengths(self.images.shape[0], self.labels.shape[0], f"labels file {labels_path}")
        self.scale = 1.0 / 255.0 if self.images.dtype == np.uint8 else 1.0
        self.sample_shape = tuple(self.images.shape[1:]) or (1,)
        self.n = self.images.shape[0]
        self.y_dtype = self.labels.dtype

    def _block(self, lo, hi):
        X = np.asarray(self.images[lo:hi], dtype=np.float64).reshape(hi - lo, *self.sample_shape)
        return X * self.scale if self.scale != 1.0 else X, np.asarray(self.labels[lo:hi])


def sibling_labels(path):
    """`*images-idx3-ubyte*` -> `*labels-idx1-ubyte*` (also with '.' separators)."""
    folder, name = os.path.split(path)
    new = re.sub(r"images([.-])idx3([.-])ubyte", r"labels\1idx1\2ubyte", name)
    return os.path.join(folder, new) if new != name else None


def _idx_header(head):
    """(dtype, ndim) when `head` starts an IDX file, else None."""
    if len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in IDX_TYPES and 1 <= head[3] <= 4:
        return IDX_TYPES[head[2]], head[3]
    return None


def _idx_array(path, key):
    """The whole IDX array: a read-only memmap, or in memory when gzipped."""
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        raw = _read_bytes(path, True) if compressed else None
        if compressed:
            head = raw[:4 + 4 * 4]
        else:
            with open(path, "rb") as f:
                head = f.read(4 + 4 * 4)
    except (OSError, EOFError) as e:
        raise ConfigError(f"{key} {path}: cannot read as IDX ({_one_line(e)})")
    hdr = _idx_header(head)
    if hdr is None or len(head) < 4 + 4 * hdr[1]:
        raise ConfigError(f"{key} {path}: not an IDX file (bad magic number)")
    dtype, ndim = hdr
    dims = tuple(int(v) for v in np.frombuffer(head[4:4 + 4 * ndim], dtype=">u4"))
    offset = 4 + 4 * ndim
    need = offset + int(np.prod(dims)) * dtype.itemsize
    size = len(raw) if compressed else os.path.getsize(path)
    if size < need:
        raise ConfigError(f"{key} {path}: truncated IDX file ({size} bytes, header says {need})")
    if compressed:
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=offset).reshape(dims)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dims)


def open_source(path, key, labels_path="", labels_key="data.labels_path") -> Source:
    """Pick the reader by magic bytes, then by extension; LIBSVM text otherwise."""
    if not os.path.isfile(path):
        raise ConfigError(f"{key} {path} does not exist" if not os.path.exists(path)
                          else f"{key} {path} is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        inner = head
        if head[:2] == GZIP_MAGIC:
            with gzip.open(path, "rb") as f:
                inner = f.read(8)
    except (OSError, EOFError) as e:
        raise ConfigError(f"{key} {path}: cannot read ({_one_line(e)})")
    ext = path.lower()
    if head.startswith(b"PK") or ext.endswith(".npz"):
        return NpzSource(path, key)
    if head == HDF5_MAGIC or ext.endswith((".h5", ".hdf5")):
        return H5Source(path, key)
    if _idx_header(inner) is not None:
        return IdxSource(path, key, labels_path, labels_key)
    return LibsvmSource(path, key, compressed=head[:2] == GZIP_MAGIC)
