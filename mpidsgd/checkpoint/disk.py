"""Disk safety for checkpoints and metrics: a folder that cannot be written is
found at start-up, and a full disk is one clean error, never a crash.

HDF5 does not survive a failed write: after `No space left on device` the
library prints a traceback for every object it frees and the process may die
of a segmentation fault. So the checkpoint writer never lets HDF5 see an
error: it checks the free space first, and writes through `GuardedFile`, a
file object that records the first failing write and then drops the rest, so
the library finishes normally and the caller deletes the half-written
temporary file and reports what happened. Records appended to metrics.jsonl
go through `append_line`, which cuts a partial line off again.
"""
from __future__ import annotations

import errno
import io
import os
import tempfile

from ..errors import AgreedError, CheckpointError

# HDF5's own bytes: superblock, object headers, chunk indexes, attributes
FILE_OVERHEAD = 64 * 1024
DATASET_OVERHEAD = 4 * 1024


class DiskError(RuntimeError):
    """A write that failed for lack of space (or another I/O error)."""


def nearest_existing(path: str) -> str:
    """`path` or its nearest ancestor that exists (for free-space questions)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged user may still write where `path` lives."""
    try:
        st = os.statvfs(nearest_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_writable(folder: str, key: str):
    """Create `folder` if needed and prove a file can be made in it; a
    CheckpointError (one line, exit 2) naming `key` otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mpidsgd-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            why = "a file is in the way"
        raise CheckpointError(f"{key} {folder} is not writable: {why}") from None


def estimate_bytes(payload_bytes: int, n_datasets: int) -> int:
    """An upper estimate of a checkpoint file's size."""
    return FILE_OVERHEAD + payload_bytes + DATASET_OVERHEAD * n_datasets


def no_space(folder: str, needed: int, free=None, what="checkpoint", exc=None) -> str:
    """The one-line message for a write that does not fit."""
    free = free_bytes(folder) if free is None else free
    cause = "no space left" if exc is None or exc.errno == errno.ENOSPC else \
        (exc.strerror or str(exc))
    have = f", {free:,} bytes free" if free is not None else ""
    about = "about " if what == "checkpoint" else ""      # checkpoints: an upper estimate
    return f"{cause} in {folder}: the {what} needs {about}{needed:,} bytes{have}"


class GuardedFile(io.RawIOBase):
    """A read/write file for h5py's file-object driver that never raises on
    write: the first OSError is kept in `.error` and later writes are
    dropped, so HDF5 closes cleanly; the caller then removes the file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.fh = open(path, "w+b", buffering=0)
        self.error = None

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.fh.seek(offset, whence)

    def tell(self):
        return self.fh.tell()

    def readinto(self, buf):
        return self.fh.readinto(buf)

    def write(self, data):
        n = memoryview(data).nbytes
        pos = self.fh.tell()
        if self.error is None:
            try:
                done = 0
                view = memoryview(data).cast("B")
                while done < n:
                    done += self.fh.write(view[done:])
                return n
            except OSError as exc:
                self.error = exc
        self.fh.seek(pos + n)
        return n

    def truncate(self, size=None):
        try:
            return self.fh.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return size

    def flush(self):
        pass

    def fileno(self):
        return self.fh.fileno()

    def close(self):
        if not self.fh.closed:
            self.fh.close()
        super().close()


def remove_quietly(path: str):
    """Delete a temporary file if it is there (a failed write's leftovers)."""
    try:
        os.remove(path)
    except OSError:
        pass


def try_append(fh, text: str) -> str | None:
    """append_line, giving back the error line instead of raising (None: written)."""
    try:
        append_line(fh, text)
    except DiskError as exc:
        return str(exc)
    return None


def append_line(fh, text: str):
    """Append one line to an open text file, all or nothing: on an OSError
    the file is cut back to its old length and DiskError says why."""
    data = text.encode()
    fh.flush()
    fd = fh.fileno()
    start = os.fstat(fd).st_size
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
    except OSError as exc:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        folder = os.path.dirname(os.path.abspath(fh.name))
        raise DiskError(f"cannot append to {fh.name}: "
                        f"{no_space(folder, len(data), what='record', exc=exc)}") from None


RESUME_HINT = "free space, then --resume auto continues from the newest good checkpoint"


def write_text(path: str, text: str):
    """Write a whole file or nothing: a temporary file moved into place."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        remove_quietly(tmp)
        raise


def write_summary(topo, log, path: str, summary: dict):
    """Collective, at the end of a run: rank 0 writes summary.json; an output
    that rank 0 could not write (a metrics record, this file) becomes the same
    error on every rank (AgreedError: one line, exit code 1)."""
    import json
    from ..comm.agree import agree_error     # needs MPI: imported only when used
    err = getattr(log, "failed", None) if topo.is_root else None
    if topo.is_root and err is None:
        text = json.dumps(summary, indent=2)
        try:
            write_text(path, text)
        except OSError as exc:
            err = f"cannot write {path}: " + no_space(os.path.dirname(os.path.abspath(path)),
                                                       len(text), what="file", exc=exc)
    err = agree_error(topo.world, err)
    if err:
        raise AgreedError(f"{err}; {RESUME_HINT}")
