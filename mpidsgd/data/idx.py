"""IDX (the MNIST format): images and labels, plain or gzip.

Header: two zero bytes, a type code, the number of dimensions k, then k
big-endian uint32 sizes; the values follow. The header is checked against
the file: a known type code, k within what the file's role allows (labels
1-D, images 2-D to 4-D, and the k of an `idxK` name), and a file size equal
to header + values exactly, so a corrupted dimension count is an error, not
a silently different shape.
"""
from __future__ import annotations

import gzip
import os
import re

import numpy as np

from ..config import ConfigError
from .source import Source, one_line

GZIP_MAGIC = b"\x1f\x8b"
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IDX_NAME = re.compile(r"idx(\d)")


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
        self.images = idx_array(path, key, ranks=(2, 3, 4))
        self.labels = idx_array(labels_path, labels_key, ranks=(1,))
        self._check_lengths(self.images.shape[0], self.labels.shape[0], f"labels file {labels_path}")
        self.scale = 1.0 / 255.0 if self.images.dtype == np.uint8 else 1.0
        self.sample_shape = tuple(self.images.shape[1:])
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


def looks_like_idx(path) -> bool:
    """The file's name says IDX (`...idx3-ubyte`, `...idx1-ubyte.gz`)."""
    return bool(re.search(r"idx\d[.-]ubyte", os.path.basename(path).lower()))


def idx_header(head):
    """(dtype, ndim) when `head` starts an IDX file, else None."""
    if len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in IDX_TYPES and 1 <= head[3] <= 4:
        return IDX_TYPES[head[2]], head[3]
    return None


def _read_head(path, key):
    """(first 20 bytes of the values stream, whole decompressed bytes or None)."""
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        if compressed:
            with gzip.open(path, "rb") as f:
                raw = f.read()
            return raw[:20], raw
        with open(path, "rb") as f:
            return f.read(20), None
    except (OSError, EOFError) as e:
        raise ConfigError(f"{key} {path}: cannot read as IDX ({one_line(e)})")


def idx_array(path, key, ranks=(1, 2, 3, 4)):
    """The whole IDX array, header checked: a read-only memmap, or in memory when gzipped."""
    head, raw = _read_head(path, key)
    hdr = idx_header(head)
    if hdr is None:
        raise ConfigError(f"{key} {path}: not an IDX file (bad magic number 0x{head[:4].hex()}; "
                          "expected 0x0000 then a type code 08..0E and 1..4 dimensions)")
    dtype, ndim = hdr
    named = IDX_NAME.search(os.path.basename(path).lower())
    allowed = (int(named.group(1)),) if named and int(named.group(1)) in ranks else ranks
    if ndim not in allowed or len(head) < 4 + 4 * ndim:
        raise ConfigError(f"{key} {path}: the IDX header gives {ndim} dimension(s); "
                          f"expected {' or '.join(map(str, allowed))}")
    dims = tuple(int(v) for v in np.frombuffer(head[4:4 + 4 * ndim], dtype=">u4"))
    offset = 4 + 4 * ndim
    count = 1
    for d in dims:                      # Python ints: no overflow on absurd sizes
        count *= d
    if count == 0:
        raise ConfigError(f"{key} {path}: the IDX header dims {list(dims)} hold no values")
    need = offset + count * dtype.itemsize
    size = len(raw) if raw is not None else os.path.getsize(path)
    if size != need:
        what = "truncated IDX file" if size < need else "IDX file longer than its header says"
        raise ConfigError(f"{key} {path}: {what} ({size} bytes; header dims {list(dims)} of "
                          f"{dtype.itemsize}-byte values give {need})")
    if raw is not None:
        return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dims)
