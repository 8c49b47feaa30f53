"""Float64 references of the two top-k baselines for all ranks at once,
written from their definitions without project code: TopkA (every rank's
top-k of gradient + residual, summed where indices coincide, averaged) and
gTop-k (a binary tree of pairwise merges that keeps the top-k of each union;
a rank's selected entries that do not survive stay in its residual)."""
import numpy as np


def ref_topk(acc, k):
    """Indices of the k largest |acc|, ties to the lower index (sorted)."""
    order = sorted(range(acc.size), key=lambda i: (-abs(acc[i]), i))
    return sorted(order[:k])


def ref_topka(g, e, k):
    P, n = g.shape
    out, res = np.zeros(n), []
    for r in range(P):
        acc = g[r] + e[r]
        sel = ref_topk(acc, k)
        for i in sel:                      # a duplicate index adds
            out[i] += acc[i]
        new = acc.copy()
        new[sel] = 0
        res.append(new)
    return out / P, res


def ref_gtopk(g, e, k):
    P, n = g.shape
    accs = [g[r] + e[r] for r in range(P)]
    own = [ref_topk(a, k) for a in accs]
    cur = [{i: accs[r][i] for i in own[r]} for r in range(P)]
    gap = 1
    while gap < P:
        for r in range(0, P, 2 * gap):
            merged = dict(cur[r])
            for i, v in cur[r + gap].items():
                merged[i] = merged.get(i, 0.0) + v
            # top-k of the union only (entries outside it are not candidates)
            keys = sorted(merged, key=lambda i: (-abs(merged[i]), i))[:k]
            cur[r] = {i: merged[i] for i in keys}
        gap *= 2
    final = cur[0]
    out = np.zeros(n)
    for i, v in final.items():
        out[i] = v / P
    res = []
    for r in range(P):
        new = accs[r].copy()
        new[[i for i in own[r] if i in final]] = 0
        res.append(new)
    return out, res
