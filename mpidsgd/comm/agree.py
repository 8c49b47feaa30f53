"""Error agreement: every rank learns the same error at the same point.

Bad input is often seen by one rank only (a file missing on one node, a full
disk under rank 0). Before any rank acts on it the ranks agree: the message
of the lowest rank that has one reaches every rank, so all of them raise the
same error, print one line and exit together; none is left waiting in a
collective. This module is the one place that decides it.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError, InputError
from .channel import Channel


def agree_error(comm, message: str | None) -> str | None:
    """Collective: the message of the lowest rank whose `message` is not
    None, on every rank (None when no rank has one).

    `comm` is a Channel (the vote is booked under its current phase) or a raw
    communicator (at start-up, before the run's Channel exists: booked in
    counters of its own, so nothing the run reports).
    """
    ch = comm if isinstance(comm, Channel) else Channel(comm)
    rank, size = ch.rank, ch.size
    # the lowest failing rank (size: none)
    first = int(ch.allreduce_values([size if message is None else rank], op=MPI.MIN)[0])
    if first == size:
        return None
    # its message, whole, to everyone: the length, then the UTF-8 bytes
    raw = message.encode() if rank == first else b""
    n = ch.Bcast(np.array([len(raw)], np.int64), root=first)
    buf = np.frombuffer(raw, np.uint8).copy() if rank == first else np.empty(int(n[0]), np.uint8)
    return ch.Bcast(buf, root=first).tobytes().decode()


def agreed(comm, fn, error=ConfigError, catch=InputError):
    """Run `fn()` on every rank and return what it returns. If it raised
    `catch` on some rank, raise `error` with the lowest such rank's message
    on every rank. Other exceptions (bugs) propagate as they are: the job
    aborts."""
    out, message = None, None
    try:
        out = fn()
    except catch as exc:
        message = str(exc)
    message = agree_error(comm, message)
    if message is not None:
        raise error(message)
    return out
