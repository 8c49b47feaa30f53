"""FlatLayout: named, shaped views into one contiguous parameter buffer.

Every model keeps all of its parameters in one flat 1-D array so that every
algorithm moves, sparsifies, averages and checkpoints a single buffer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod


@dataclass
class FlatLayout:
    """Ordered (name, shape) entries packed back to back in one 1-D buffer."""

    entries: list = field(default_factory=list)   # (name, shape, offset)
    size: int = 0

    def add(self, name: str, shape) -> "FlatLayout":
        """Append a named block of the given shape; returns self for chaining."""
        shape = tuple(int(s) for s in shape)
        if any(e[0] == name for e in self.entries):
            raise ValueError(f"duplicate layout entry {name!r}")
        self.entries.append((name, shape, self.size))
        self.size += prod(shape)
        return self

    def names(self):
        return [e[0] for e in self.entries]

    def shape(self, name: str):
        return self._entry(name)[1]

    def slice(self, name: str) -> slice:
        _, shape, off = self._entry(name)
        return slice(off, off + prod(shape))

    def view(self, buf, name: str):
        """A shaped view (no copy) of `name` inside the flat buffer `buf`."""
        if buf.ndim != 1 or buf.shape[0] != self.size:
            raise ValueError(f"buffer of shape {buf.shape} does not match layout of size {self.size}")
        _, shape, off = self._entry(name)
        return buf[off:off + prod(shape)].reshape(shape)

    def views(self, buf) -> dict:
        """All named views of `buf`, in layout order."""
        return {name: self.view(buf, name) for name, _, _ in self.entries}

    def _entry(self, name):
        for e in self.entries:
            if e[0] == name:
                return e
        raise KeyError(f"no layout entry {name!r}")
