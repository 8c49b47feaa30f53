"""Booking rules and alpha-beta predictions for every communication scheme.

Booking rules (what the Channel counts for a LIBRARY collective, per rank, as
bytes and messages this rank sends under the standard algorithm):

    allreduce of n items of s bytes:   2(P-1)/P * n*s bytes,  2*ceil(log2 P) messages
                                       (Rabenseifner: reduce-scatter + all-gather)
    allgather of m bytes from each:    (P-1) * m bytes,        ceil(log2 P) messages
    bcast of n items of s bytes:       n*s*(P-1)/P bytes,      ceil(log2 P) messages
                                       (the root's tree spread evenly over ranks)
    barrier:                           0 bytes,                ceil(log2 P) messages

Point-to-point traffic is booked exactly (payload bytes, one message per send).
"""
from __future__ import annotations

import math


def log2ceil(p: int) -> int:
    """ceil(log2 p), 0 for p <= 1."""
    return 0 if p <= 1 else math.ceil(math.log2(p))


# -- booking rules for library collectives ------------------------------------
def allreduce_booking(nbytes: float, p: int):
    """(bytes, messages) booked per rank for an allreduce of `nbytes`."""
    if p <= 1:
        return 0.0, 0
    return 2.0 * (p - 1) / p * nbytes, 2 * log2ceil(p)


def allgather_booking(nbytes_each: float, p: int):
    """(bytes, messages) per rank for an allgather of `nbytes_each` per rank."""
    if p <= 1:
        return 0.0, 0
    return float((p - 1) * nbytes_each), log2ceil(p)


def bcast_booking(nbytes: float, p: int):
    """(bytes, messages) per rank for a broadcast of `nbytes`."""
    if p <= 1:
        return 0.0, 0
    return nbytes * (p - 1) / p, log2ceil(p)


def barrier_booking(p: int):
    return 0.0, log2ceil(p)


# -- alpha-beta time predictions -------------------------------------------------
def alpha_beta_time(nbytes: float, messages: float, alpha: float, beta: float) -> float:
    """Seconds for `messages` latencies and `nbytes` at `beta` seconds per byte."""
    return messages * alpha + nbytes * beta


def dense_ring(n: int, s: int, p: int):
    """Ring allreduce: (bytes, messages) per rank."""
    if p <= 1:
        return 0.0, 0
    return 2.0 * n * s * (p - 1) / p, 2 * (p - 1)


def dense_rabenseifner(n: int, s: int, p: int):
    """Rabenseifner allreduce (the booking rule of MPI Allreduce)."""
    return allreduce_booking(n * s, p)
