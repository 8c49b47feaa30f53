"""File readers: .npz, HDF5 and LIBSVM/svmlight text here, CSV (csvfile.py)
and IDX (idx.py); `open_source` picks one by magic bytes, then by name.

Every reader is a Source (source.py): `n` samples of raw shape
`sample_shape`, and `read(rows)` returning (X float64, y as stored) for
sorted row numbers. HDF5 and uncompressed IDX read only the block of rows
asked for, so a rank touches only its own part of the file; .npz, gzip and
text are read whole (their formats allow nothing else). Every failure is a
one-line ConfigError naming the config key and the file. A `.npy` file is
refused: one array carries no labels.
"""
from __future__ import annotations

import gzip
import os
import zipfile

import numpy as np

from ..config import ConfigError
from .csvfile import CsvSource
from .idx import GZIP_MAGIC, IdxSource, idx_header, looks_like_idx, sibling_labels
from .source import Source, check_arrays, one_line, quote

__all__ = ["CsvSource", "H5Source", "IdxSource", "LibsvmSource", "NpzSource", "Source",
           "open_source", "sibling_labels"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
SUPPORTED = ".npz, .h5/.hdf5, .csv, .svm/.libsvm/.txt or IDX"
MAX_FEATURES = 2 ** 31 - 1   # LIBSVM feature indices: int32, as libsvm itself


def _csv_hint(token) -> str:
    return "; a comma-separated file must be named .csv" if "," in token else ""


class NpzSource(Source):
    fmt = "npz"

    def __init__(self, path, key):
        super().__init__(path, key)
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("X", "y") if k not in z.files]
                if missing:
                    self.fail(f"no array {missing[0]!r} (arrays: {quote(sorted(z.files))})")
                self.X, self.y = z["X"], z["y"]
        except ConfigError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError) as e:
            self.fail(f"cannot read as .npz ({one_line(e)})")
        self.sample_shape = check_arrays(self, self.X, self.y)
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
                self.fail(f"no dataset {missing[0]!r} (keys: {quote(sorted(f.keys()))})")
            X, y = f["X"], f["y"]
            self.sample_shape = check_arrays(self, X, y)
            self.n = X.shape[0]

    def _open(self):
        h5py = _h5py()
        try:
            try:   # no file locks: many ranks read at once, often on NFS/Lustre
                return h5py.File(self.path, "r", locking=False)
            except TypeError:
                return h5py.File(self.path, "r")
        except OSError as e:
            self.fail(f"cannot read as HDF5 ({one_line(e)})")

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
            self.fail(f"cannot read as LIBSVM text ({one_line(e)}); supported formats: {SUPPORTED}")
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
        if len(idx) and idx.max() > MAX_FEATURES:
            bad = int(np.argmax(idx))
            self.fail(f"line {np.repeat(linenos, counts)[bad]}: feature index {idx[bad]:.0f} "
                      f"is above {MAX_FEATURES}")
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
                    self.fail(f"line {ln}: expected idx:value, got {quote(tok)}")
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
                    self.fail(f"line {ln}: {what} {quote(s)} is not a number{_csv_hint(s)}")
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


def open_source(path, key, labels_path="", labels_key="data.labels_path", label_column=-1) -> Source:
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
        raise ConfigError(f"{key} {path}: cannot read ({one_line(e)})")
    return _pick(path, key, head, inner, labels_path, labels_key, label_column)


def _pick(path, key, head, inner, labels_path, labels_key, label_column):
    """The reader for this file: magic bytes first, then the name."""
    name = path.lower()
    ext = os.path.splitext(name[:-3] if name.endswith(".gz") else name)[1]
    if inner.startswith(NPY_MAGIC) or ext == ".npy":
        raise ConfigError(f"{key} {path}: unsupported extension .npy (one array, no labels); "
                          f"use {SUPPORTED}: numpy.savez(path, X=X, y=y) writes a .npz")
    if head.startswith(ZIP_MAGIC):
        return NpzSource(path, key)
    if ext == ".npz":
        raise ConfigError(f"{key} {path}: cannot read as .npz (no zip header: not an archive "
                          "from numpy.savez(path, X=X, y=y))")
    if head == HDF5_MAGIC or ext in (".h5", ".hdf5"):
        return H5Source(path, key)
    if idx_header(inner) is not None or looks_like_idx(path):
        return IdxSource(path, key, labels_path, labels_key)
    if ext == ".csv":
        return CsvSource(path, key, label_column)
    return LibsvmSource(path, key, compressed=head[:2] == GZIP_MAGIC)
