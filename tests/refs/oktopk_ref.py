"""Plain serial simulation of one Ok-Topk step for ALL ranks at once, written
from the description of the algorithm (Li & Hoefler, PPoPP 2022, and the
rules in docs/algorithms/oktopk.md), without project code: the reference the
MPI collective (mpidsgd/comm/oktopk.py) must match bit for bit.

Arrays are indexed [rank, position]. Thresholds are values of the data type,
computed in float64 and rounded to it.
"""
import math

import numpy as np


def rnd(dtype, x):
    return float(np.dtype(dtype).type(x))


def kth(absv, k):
    """k-th largest entry of absv; 0 when it has fewer than k entries."""
    if absv.size < k:
        return 0.0
    return float(np.sort(absv)[::-1][k - 1])


def passing(absv, thr):
    return absv >= thr if thr > 0 else absv > 0


def adapt(thr, count, k, lo, hi, factor, dtype):
    if count < lo * k:
        return rnd(dtype, thr / factor)
    if count > hi * k:
        return rnd(dtype, thr * factor)
    return thr


def fresh_state(P, n):
    return {"t": 0, "local": [0.0] * P, "global": 0.0,
            "bounds": [i * n // P for i in range(P + 1)]}


def simulate(G, E, st, density, threshold_every=32, region_every=64):
    """One step on every rank. G, E: (P, n); st: fresh_state() or the
    previous step's "state". Returns dict(out, E, state, support, sent
    (entries each rank sends to others), gathered (entries per rank in the
    allgatherv), selected (per rank), exact, rebalance)."""
    P, n = G.shape
    dt = G.dtype
    k = max(1, min(n, math.floor(n * density)))
    t = st["t"]
    exact, rebalance = t % threshold_every == 0, t % region_every == 0
    A = G + E
    # 1. local selections with the exact or the reused, raised threshold
    sels, new_local, used = [], [], []
    for r in range(P):
        a = np.abs(A[r])
        if exact:
            thr = rnd(dt, kth(a, k))
        else:
            thr = st["local"][r]
            tries = 0
            while tries < 5 and passing(a, thr).sum() > 4 * k / 3:
                thr = rnd(dt, thr * 1.03)
                tries += 1
        sel = np.flatnonzero(passing(a, thr))
        sels.append(sel)
        used.append(thr)
        new_local.append(adapt(thr, sel.size, k, 2 / 3, 5 / 4, 1.012, dt))
    # 2. region boundaries from every rank's P-1 sample indices
    bounds = list(st["bounds"])
    if rebalance:
        total = [0] * (P - 1)
        for sel in sels:
            c = sel.size
            for i in range(1, P):
                total[i - 1] += int(sel[i * (c // P)]) if c >= P else i * n // P
        bounds = [0] + [v // P for v in total] + [n]
    # 3. every region summed over the ranks in rank order
    sums = np.zeros(n, dt)
    received = np.zeros(n, bool)
    sent = []
    for r in range(P):
        sent.append(sum(1 for i in sels[r] if not bounds[r] <= i < bounds[r + 1]))
    for q in range(P):
        sums[sels[q]] += A[q, sels[q]]
        received[sels[q]] = True
    # 4. global selection
    owner = [np.arange(bounds[j], bounds[j + 1]) for j in range(P)]
    cand = [o[received[o]] for o in owner]
    if exact:
        gathered = [c.size for c in cand]
        allc = np.concatenate(cand)
        gthr = rnd(dt, kth(np.abs(sums[allc]), k))
        support = allc[np.abs(sums[allc]) >= gthr]
    else:
        gthr = st["global"]
        surv = [c[np.abs(sums[c]) >= gthr] for c in cand]
        gathered = [s.size for s in surv]
        support = np.concatenate(surv)
    gthr = adapt(gthr, support.size, k, 2 / 3, 4 / 3, 1.008, dt)
    # 5. residual: zero only where selected locally and kept globally
    Enew = A.copy()
    for r in range(P):
        both = np.intersect1d(sels[r], support)
        Enew[r, both] = 0
    # 6. output
    out = np.zeros(n, dt)
    out[support] = sums[support] / P if P > 1 else sums[support]
    state = {"t": t + 1, "local": new_local, "global": gthr, "bounds": bounds}
    return {"out": out, "E": Enew, "state": state, "support": support, "sent": sent,
            "gathered": gathered, "selected": [s.size for s in sels], "used": used,
            "exact": exact, "rebalance": rebalance, "k": k}
