"""Comma-separated text (.csv, plain or gzip): one sample per line.

A first line with a field that is not a number is a header. The label is
the column `data.label_column` (an index, negative counting from the end,
default -1: the last column; or a header name); every other column is a
feature. Every rank parses the whole file, as for LIBSVM text.
"""
from __future__ import annotations

import gzip

import numpy as np

from .source import Source, one_line, quote

GZIP_MAGIC = b"\x1f\x8b"


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class CsvSource(Source):
    fmt = "csv"

    def __init__(self, path, key, label_column=-1):
        super().__init__(path, key)
        lines = self._lines()
        header = None
        if lines and not all(_is_number(t) for t in lines[0][1].split(",")):
            header = [t.strip().strip('"').strip("'") for t in lines[0][1].split(",")]
            lines = lines[1:]
        if not lines:
            self.fail("holds no samples")
        width = len(header) if header else len(lines[0][1].split(","))
        if width < 2:
            self.fail("needs two columns or more (features and a label), separated by ','")
        table = self._numbers(lines, width)
        col = self._label_index(label_column, header, width)
        self.y = table[:, col]
        self.X = np.delete(table, col, axis=1)
        self.n, self.sample_shape = len(table), (width - 1,)
        self.y_dtype = np.dtype(np.float64)

    def _lines(self):
        """(line number, text) of the non-blank lines."""
        try:
            with open(self.path, "rb") as f:
                compressed = f.read(2) == GZIP_MAGIC
            opener = gzip.open if compressed else open
            with opener(self.path, "rb") as f:
                text = f.read().decode("utf-8-sig")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            self.fail(f"cannot read as CSV text ({one_line(e)})")
        return [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]

    def _numbers(self, lines, width):
        """The (n, width) float64 table; a short line or a bad field is named."""
        rows = [ln.split(",") for _, ln in lines]
        for (lineno, _), row in zip(lines, rows):
            if len(row) != width:
                self.fail(f"line {lineno} has {len(row)} fields, expected {width}")
        try:
            table = np.array([t for row in rows for t in row], dtype=np.float64).reshape(len(rows), width)
        except ValueError:
            for (lineno, _), row in zip(lines, rows):
                for c, tok in enumerate(row):
                    if not _is_number(tok):
                        self.fail(f"line {lineno}, column {c + 1}: {quote(tok)} is not a number")
            raise
        bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
        if len(bad):
            self.fail(f"line {lines[int(bad[0])][0]}: non-finite value")
        return table

    def _label_index(self, label_column, header, width):
        """0-based label column from data.label_column (index or header name)."""
        if isinstance(label_column, str):
            if header is None or label_column not in header:
                names = f"header: {quote(','.join(header))}" if header else "the file has no header"
                self.fail(f"data.label_column {quote(label_column)} names no column ({names})")
            return header.index(label_column)
        if not -width <= label_column < width:
            self.fail(f"data.label_column {label_column} is outside the {width} columns")
        return label_column % width

    def _block(self, lo, hi):
        return self.X[lo:hi], self.y[lo:hi]
