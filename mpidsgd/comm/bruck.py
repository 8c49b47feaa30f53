"""Bruck all-gather of fixed-size blocks, for any number of ranks.

Every rank contributes one block of m items; afterwards every rank holds all
P blocks in rank order. ceil(log2 P) steps, one message each:

    T[j] = block of rank (r + j) mod P           (rotated working buffer)
    step t: gap = 2^t, cnt = min(2 gap, P) - gap
            send T[0:cnt] to (r - gap) mod P, receive T[gap:gap+cnt] from (r + gap) mod P
    out[(r + j) mod P] = T[j]

Per rank: (P - 1) * m items sent in ceil(log2 P) messages. The sparse
collectives gather packed (index, value) messages this way, so every block
has a static size and the counters match comm/costmodel.py.
"""
from __future__ import annotations

from ..backend import array_module

TAG_BRUCK = 0x5B1


def bruck_allgather(mine, *, channel, out=None, tag=TAG_BRUCK):
    """All-gather `mine` (1-D, same size and dtype on every rank).

    Returns out (P x m, a new array unless given) with out[q] = rank q's
    block. NumPy or CuPy arrays; all traffic goes through `channel`.
    """
    xp = array_module(mine)
    P, r, m = channel.size, channel.rank, mine.size
    if out is None:
        out = xp.empty((P, m), mine.dtype)
    T = xp.empty((P, m), mine.dtype)
    T[0] = mine
    gap = 1
    while gap < P:
        cnt = min(2 * gap, P) - gap
        channel.Sendrecv(T[:cnt].reshape(-1), (r - gap) % P,
                         T[gap:gap + cnt].reshape(-1), (r + gap) % P,
                         sendtag=tag, recvtag=tag)
        gap *= 2
    # undo the rotation: block of rank (r + j) mod P sits in T[j]
    out[r:] = T[:P - r]
    out[:r] = T[P - r:]
    return out
