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


def ring_bounds(n: int, p: int):
    """Chunk c of a ring allreduce is [bounds[c], bounds[c+1]) (sizes differ by <= 1)."""
    return [(c * n) // p for c in range(p + 1)]


def ring_allreduce_sum(buf, *, channel):
    """In place: buf <- sum over the channel's ranks, by the plain ring
    (reduce-scatter then all-gather, 2(P-1) point-to-point steps to the right
    neighbour). Rank r sends every chunk but r+1 and r+2 (mod P): on average
    2n(P-1)/P items and 2(P-1) messages per rank (costmodel.dense_ring)."""
    p, r = channel.size, channel.rank
    if p == 1:
        return buf
    b = ring_bounds(buf.size, p)
    right, left = (r + 1) % p, (r - 1) % p
    tmp = channel.backend.xp.empty(b[1] - b[0] + 1, buf.dtype)

    def chunk(c):
        return buf[b[c]:b[c + 1]]
    # reduce-scatter: after step t, chunk r - t - 1 holds t + 2 ranks' sums
    for t in range(p - 1):
        send, recv = (r - t) % p, (r - t - 1) % p
        got = tmp[:b[recv + 1] - b[recv]]
        channel.Sendrecv(chunk(send), right, got, left)
        chunk(recv)[...] += got
    # all-gather: rank r starts with the complete chunk r + 1
    for t in range(p - 1):
        send, recv = (r + 1 - t) % p, (r - t) % p
        channel.Sendrecv(chunk(send), right, chunk(recv), left)
    return buf
