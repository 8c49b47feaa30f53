"""Dense allreduce through MPI (booked as Rabenseifner), and a mean helper."""
from __future__ import annotations


def allreduce_mean(buf, *, channel):
    """In place: buf <- mean over the channel's ranks of buf."""
    channel.Allreduce(buf)
    if channel.size > 1:
        buf /= channel.size
    return buf


def allreduce_sum(buf, *, channel):
    """In place: buf <- sum over the channel's ranks of buf."""
    return channel.Allreduce(buf)


def iallreduce_sum(buf, *, channel):
    """Start a non-blocking in-place sum; call .Wait() on the result."""
    return channel.Iallreduce(buf)
