"""Plain serial simulation of one SparDL step for ALL ranks at once, written
straight from the rules in docs/algorithms/sparse.md (no project code), used
as the reference the MPI collective must match bit for bit.

Arrays are indexed [global rank, block, offset]; the team of global rank q is
q // P', its team-rank q % P'.
"""
import math

import numpy as np


def topk_idx(x, k):
    """Positions of the k largest |x|, ties to the lower position, ascending."""
    order = np.argsort(-np.abs(x), kind="stable")
    return np.sort(order[:k])


def layout(n, p_team, density):
    c = math.ceil(n / p_team)
    return c, max(1, math.floor(c * density + 1e-9))


def merge(sels, c, k_b):
    """Coalesce selections in list order (sums start at zero), then top-k_b.
    Returns (kept idx, kept sums, union idx, sums over c)."""
    acc = np.zeros(c, sels[0][1].dtype)
    member = np.zeros(c, bool)
    for idx, val in sels:
        acc[idx] += val                 # indices are unique inside one selection
        member[idx] = True
    union = np.flatnonzero(member)
    keep = union[topk_idx(acc[union], k_b)] if union.size > k_b else union
    return keep, acc[keep], union, acc


def simulate(G, E, density, teams=1, sag="bruck", h=None):
    """One step on every rank. G, E: (P, n). h: {team-rank: h} for B-SAG.

    Returns dict(out (n,), E (P, n), support (sorted padded-global indices),
    h (new B-SAG h per team-rank), union (per team-rank), k_b, srs (entries
    per SRS round)).
    """
    P, n = G.shape
    d = teams
    pt = P // d
    c, k_b = layout(n, pt, density)
    A = np.zeros((P, pt * c), G.dtype)
    A[:, :n] = G + E
    A0 = A.copy()
    A = A.reshape(P, pt, c)
    R = math.ceil(math.log2(pt)) if pt > 1 else 0
    srs = []
    # Spar-Reduce-Scatter in every team, round by round
    for i in range(R):
        gap = 2 ** (R - 1 - i)
        s = pt - 2 ** (R - 1) if i == 0 else gap
        srs.append(s * k_b)
        mail = []
        for q in range(P):
            t, r = divmod(q, pt)
            out = []
            for j in range(s):
                b = (r + gap + j) % pt
                idx = topk_idx(A[q, b], k_b)
                out.append((idx, A[q, b, idx].copy()))
                A[q, b, idx] = 0
            mail.append((t * pt + (r + gap) % pt, out))
        for dest, out in mail:
            for j, (idx, val) in enumerate(out):
                A[dest, (dest % pt + j) % pt, idx] += val
    # own block, or Spar-All-Gather across the teams
    final, new_h, unions = {}, {}, {}
    for r in range(pt):
        members = [t * pt + r for t in range(d)]
        if d == 1:
            idx = topk_idx(A[r, r], k_b)
            final[r] = (idx, A[r, r, idx].copy())
            A[r, r, idx] = 0
        elif sag == "bruck":
            hh = h[r]
            sels = []
            for q in members:
                idx = topk_idx(A[q, r], hh)
                sels.append((idx, A[q, r, idx].copy()))
                A[q, r, idx] = 0
            keep, val, union, _ = merge(sels, c, k_b)
            final[r] = (keep, val)
            unions[r] = union.size
            h_min = max(1, k_b // d)
            if union.size > k_b:
                new_h[r] = max(h_min, math.floor(0.8 * hh))
            elif union.size < k_b:
                new_h[r] = min(k_b, math.ceil(1.25 * hh))
            else:
                new_h[r] = hh
        else:
            cur = {}
            for t, q in enumerate(members):
                idx = topk_idx(A[q, r], k_b)
                cur[t] = (idx, A[q, r, idx].copy())
                A[q, r, idx] = 0
            s = 0
            while 2 ** s < d:
                nxt = {}
                for t, q in enumerate(members):
                    lo, hi = sorted((t, t ^ 2 ** s))
                    keep, val, union, acc = merge([cur[lo], cur[hi]], c, k_b)
                    drop = np.setdiff1d(union, keep)
                    A[q, r, drop] += acc[drop] / 2 ** (s + 1)
                    nxt[t] = (keep, val)
                cur = nxt
                s += 1
            final[r] = cur[0]
    # result and global residual collection
    out = np.zeros(pt * c, G.dtype)
    support = []
    for r, (idx, val) in final.items():
        out[r * c + idx] = val / P
        support.extend(r * c + idx)
    support = np.array(sorted(support), dtype=np.int64)
    A = A.reshape(P, pt * c)
    Enew = A0.copy()
    Enew[:, support] = A[:, support]
    return {"out": out[:n], "E": Enew[:, :n], "support": support, "h": new_h,
            "union": unions, "k_b": k_b, "srs": srs, "pad": Enew[:, n:]}
