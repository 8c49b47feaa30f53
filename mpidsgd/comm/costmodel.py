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


def allgatherv_booking(block_bytes, p: int, rank: int):
    """(bytes, messages) `rank` books for an allgatherv of blocks of
    `block_bytes[q]` bytes: every block but the next rank's, as in the ring
    algorithm ((P-1)/P of the total on average), ceil(log2 P) messages like
    an allgather; equal blocks give the allgather rule exactly."""
    if p <= 1:
        return 0.0, 0
    return float(sum(block_bytes) - block_bytes[(rank + 1) % p]), log2ceil(p)


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


# -- how many entries a selection keeps (every sparse collective) -------------------
def select_count(length: int, density: float) -> int:
    """Entries a top-k selection keeps out of `length`: floor(length * density),
    at least 1 and at most length. The floor has a 1e-9 guard so that a
    product meant to be whole survives float rounding (100 * 0.29 is
    28.999999999999996: 29, not 28). The one rounding rule of TopkA, gTop-k,
    Ok-Topk and SparDL."""
    length = int(length)
    return max(1, min(length, math.floor(length * density + 1e-9)))


# -- SparDL (comm/spardl.py): exact per-rank figures -------------------------------
# One sparse entry travels as a 4-byte int32 block-local index plus its value.
def spardl_block(n: int, p_team: int, density: float):
    """(c, k_b): block length c = ceil(n / P') and entries per block
    k_b = select_count(c, density)."""
    c = -(-int(n) // int(p_team))
    return c, select_count(c, density)


def spardl_entries(n: int, p: int, density: float, *, teams: int = 1, sag: str = "bruck",
                   h: int | None = None, batched: bool = True):
    """Sparse entries and messages ONE rank sends in one SparDL allreduce, by
    phase: {"srs": (entries, messages), "sag": ..., "ag": ...}.

    SRS and the final all-gather run in a team of P' = P / teams ranks:
    (P' - 1) k_b entries each, ceil(log2 P') messages each (SRS unbatched:
    P' - 1 messages). B-SAG: (d - 1) min(h, c) entries in ceil(log2 d)
    messages, h = this group's current h (default its start value
    max(1, k_b // d)); R-SAG: k_b entries per step, log2 d steps.
    """
    d = int(teams)
    pt = p // d
    c, k_b = spardl_block(n, pt, density)
    srs_msgs = log2ceil(pt) if batched else pt - 1
    out = {"srs": ((pt - 1) * k_b, srs_msgs), "sag": (0, 0), "ag": ((pt - 1) * k_b, log2ceil(pt))}
    if d > 1 and sag == "bruck":
        hh = max(1, k_b // d) if h is None else int(h)
        out["sag"] = ((d - 1) * min(hh, c), log2ceil(d))
    elif d > 1:
        out["sag"] = (log2ceil(d) * k_b, log2ceil(d))
    return out


def spardl(n: int, s: int, p: int, density: float, *, teams: int = 1, sag: str = "bruck",
           h: int | None = None, batched: bool = True):
    """SparDL: (bytes, messages) one rank sends per allreduce, values of s
    bytes. d = 1: 2 k_b (P - 1) entries and 2 ceil(log2 P) messages."""
    ph = spardl_entries(n, p, density, teams=teams, sag=sag, h=h, batched=batched)
    entries = sum(e for e, _ in ph.values())
    return float(entries * (4 + int(s))), sum(m for _, m in ph.values())


def spardl_time(n: int, s: int, p: int, density: float, alpha: float, beta: float, **kw):
    """alpha-beta seconds of one SparDL allreduce on one rank's path."""
    return alpha_beta_time(*spardl(n, s, p, density, **kw), alpha, beta)

# -- sparse baselines and bounds (bytes per entry = 4-byte index + value size) ----
def entry_bytes(s: int) -> int:
    """Bytes of one sparse entry: an int32 index and an s-byte value."""
    return 4 + int(s)


def topka(k: int, s: int, p: int):
    """TopkA: allgather of k entries from every rank: (bytes, messages) per rank."""
    return allgather_booking(k * entry_bytes(s), p)


def _bitlength(r: int) -> int:
    return int(r).bit_length()


def gtopk_rank(k: int, s: int, p: int, rank: int):
    """gTop-k, exact (bytes, messages) sent by `rank`: one tree message unless
    it is the root, and log2 P - bitlength(rank) broadcast messages."""
    if p <= 1:
        return 0.0, 0
    msgs = (1 if rank else 0) + log2ceil(p) - _bitlength(rank)
    return float(msgs * k * entry_bytes(s)), msgs


def gtopk(k: int, s: int, p: int):
    """gTop-k, mean over ranks: 2(P-1)/P messages of k entries per rank."""
    if p <= 1:
        return 0.0, 0.0
    msgs = 2.0 * (p - 1) / p
    return msgs * k * entry_bytes(s), msgs


def gtopk_path(k: int, s: int, p: int):
    """gTop-k critical path (docs/algorithms/sparse.md, Costs): 2 log2 P messages of k entries,
    i.e. 2 log2 P alpha + 4k log2 P words."""
    m = 2 * log2ceil(p)
    return float(m * k * entry_bytes(s)), m


def oktopk_bound(k: int, s: int, p: int):
    """Ok-Topk upper bound: 6k(P-1)/P words = 3k(P-1)/P entries, 2P + 2 log2 P messages."""
    if p <= 1:
        return 0.0, 0
    return 3.0 * k * (p - 1) / p * entry_bytes(s), 2 * p + 2 * log2ceil(p)


def sparse_lower_bound(k: int, s: int, p: int):
    """Bytes per rank no sparse allreduce of k selected entries can beat
    (Ok-Topk Thm 3.1): 2k(P-1)/P words = k(P-1)/P entries."""
    if p <= 1:
        return 0.0
    return k * (p - 1) / p * entry_bytes(s)


# -- Ok-Topk (comm/oktopk.py): exact per-rank figures of one step ---------------
def oktopk_phases(p: int, s: int, rank: int, *, sent, gathered, rebalance: bool):
    """(bytes, messages) `rank` sends per phase of one Ok-Topk step, from the
    step's actual sizes: `sent` entries to the other ranks' regions (one
    message to each, empty ones included), `gathered[q]` entries rank q
    contributes to the final allgatherv, `rebalance` when the region
    boundaries were recomputed (one allreduce of P-1 int64)."""
    if p <= 1:
        return {"regions": (0.0, 0), "split": (0.0, 0), "gather": (0.0, 0)}
    e = entry_bytes(s)
    reg = allreduce_booking(8 * (p - 1), p) if rebalance else (0.0, 0)
    cb, cmsg = allgather_booking(8, p)               # the survivor counts (int64)
    vb, vm = allgatherv_booking([g * e for g in gathered], p, rank)
    return {"regions": reg, "split": (float(sent * e), p - 1), "gather": (cb + vb, cmsg + vm)}


def oktopk(p: int, s: int, rank: int, **sizes):
    """Ok-Topk: (bytes, messages) `rank` sends in one step (oktopk_phases summed)."""
    ph = oktopk_phases(p, s, rank, **sizes)
    return sum(b for b, _ in ph.values()), sum(m for _, m in ph.values())


def oktopk_mean(k: float, s: int, p: int, *, sent_per_k: float, gathered_per_k: float,
                rebalance_share: float = 1 / 64):
    """Ok-Topk mean (bytes, messages) per rank at any P, scaled from measured
    entries per selected entry: each rank sends sent_per_k * k(P-1)/P entries
    in the split and the allgatherv moves gathered_per_k * k entries in all."""
    if p <= 1:
        return 0.0, 0.0
    e = entry_bytes(s)
    split = sent_per_k * k * (p - 1) / p * e
    gath = gathered_per_k * k * (p - 1) / p * e + 8 * (p - 1)
    rb, rm = allreduce_booking(8 * (p - 1), p)
    return (split + gath + rebalance_share * rb,
            (p - 1) + 2 * log2ceil(p) + rebalance_share * rm)
