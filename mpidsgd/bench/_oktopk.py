"""Ok-Topk rows of `bench collectives`.

Ok-Topk's cost depends on its state (reused thresholds, region boundaries),
so unlike the other schemes it is NOT reset between calls: after a warm-up
of `threshold_every` calls on the same gradient, the timed calls are the
steady threshold-reuse steps (an exact-threshold step that falls due runs
untimed, as a real step). A second row, `oktopk-exact`, times the step with
exact local and global thresholds (t set to a multiple of threshold_every
that is not a rebalance step). Bytes and messages are counted over the timed
calls only; the predicted bytes are comm/costmodel.oktopk on each call's
actual sizes, so they equal the counted ones; `bound_bytes` is the Ok-Topk
bound 3k(P-1)/P entries; `sent_entries` (mean per rank) and
`gathered_entries` (all ranks together) are the step's actual sizes, which
`bench costmodel --oktopk-json` scales to other P.
"""
from __future__ import annotations

import time

import numpy as np


def _exact_t(ok):
    """A step index where the thresholds are exact and the regions are not rebalanced."""
    t = ok.threshold_every * (ok.t // ok.threshold_every + 1)
    for _ in range(ok.region_every):
        if t % ok.region_every:
            return t
        t += ok.threshold_every
    return t


def _timed_calls(ch, ok, g, out, reps, exact, mx):
    """(median ms of the slowest rank, [(bytes, messages, model (bytes, messages))])."""
    from ..comm import costmodel as cm
    times, traffic = [], []
    label = ch.label
    for _ in range(reps):
        if exact:
            ok.t = _exact_t(ok)
        elif ok.t % ok.threshold_every == 0:
            ok.allreduce(g, out)                     # the exact step that is due, untimed
        with ch.phase("sync"):
            ch.Barrier()
        b0, m0 = ch.counters.bytes.get(label, 0.0), ch.counters.messages.get(label, 0)
        t0 = time.perf_counter()
        ok.allreduce(g, out)
        ch.backend.synchronize()
        dt = time.perf_counter() - t0
        L = ok.last
        model = cm.oktopk(ch.size, g.dtype.itemsize, ch.rank, sent=L["sent"],
                          gathered=L["gathered"], rebalance=L["rebalance"])
        traffic.append((ch.counters.bytes.get(label, 0.0) - b0,
                        ch.counters.messages.get(label, 0) - m0, model, L["sent"],
                        sum(L["gathered"])))
        with ch.phase("sync"):
            times.append(float(ch.allreduce_values([dt], op=mx)[0]))
    return 1e3 * float(np.median(times)), traffic


def oktopk_records(ch, g, args, alpha, beta, dense_ms, mx):
    """The `oktopk` and `oktopk-exact` records for this setting."""
    from ..comm import costmodel as cm
    from ..comm.oktopk import OkTopk
    P, n, s = ch.size, g.size, g.dtype.itemsize
    ok = OkTopk(n, g.dtype, args.density, channel=ch)
    out = ch.backend.xp.empty_like(g)
    for _ in range(ok.threshold_every):              # warm-up: thresholds settle
        ok.allreduce(g, out)
    records = []
    for name, exact in (("oktopk", False), ("oktopk-exact", True)):
        ms, traffic = _timed_calls(ch, ok, g, out, args.reps, exact, mx)
        b = np.mean([t[0] for t in traffic])
        m = np.mean([t[1] for t in traffic])
        pb = np.mean([t[2][0] for t in traffic])
        path = max(traffic, key=lambda t: cm.alpha_beta_time(*t[2], alpha, beta))[2]
        with ch.phase("sync"):
            tot = ch.allreduce_values([b, m, pb, np.mean([t[3] for t in traffic])])
            mxb = ch.allreduce_values([b], op=mx)
            worst = ch.allreduce_values([cm.alpha_beta_time(*path, alpha, beta)], op=mx)
        emulated = alpha > 0 or beta > 0
        records.append(dict(
            scheme=name, P=P, n=n, k=ok.k, dtype=args.dtype, density=args.density,
            device=args.device, cuda_aware=bool(args.cuda_aware), alpha=alpha, beta=beta,
            ms=round(ms, 3), bytes_per_rank=tot[0] / P, max_bytes_per_rank=float(mxb[0]),
            messages_per_rank=tot[1] / P, predicted_bytes=tot[2] / P,
            predicted_ms=round(1e3 * float(worst[0]), 3) if emulated else None,
            lower_bound_bytes=cm.sparse_lower_bound(ok.k, s, P),
            bound_bytes=cm.oktopk_bound(ok.k, s, P)[0], sent_entries=tot[3] / P,
            gathered_entries=float(np.mean([t[4] for t in traffic])),
            ratio_vs_dense=round(ms / dense_ms, 4) if dense_ms else None))
    return records


def oktopk_traffic(ch, n, args, steps):
    """Mean bytes and messages per rank per step over `steps` consecutive
    Ok-Topk steps from a fresh state, a new seeded gradient every step (all
    steps: exact, reuse and rebalance), against the bound 3k(P-1)/P entries
    and the lower bound k(P-1)/P entries. One record (scheme `oktopk-traffic`)."""
    from ..comm import costmodel as cm
    from ..comm.oktopk import OkTopk
    xp = ch.backend.xp
    ok = OkTopk(n, np.dtype(args.dtype), args.density, channel=ch)
    rng = np.random.default_rng([2, ch.rank])
    out = xp.empty(n, args.dtype)
    label = ch.label
    per_step = []
    for _ in range(steps):
        g = ch.backend.asarray(rng.standard_normal(n).astype(args.dtype))
        b0, m0 = ch.counters.bytes.get(label, 0.0), ch.counters.messages.get(label, 0)
        ok.allreduce(g, out)
        per_step.append((ch.counters.bytes.get(label, 0.0) - b0,
                         ch.counters.messages.get(label, 0) - m0, ok.last["exact"]))
    reuse = [s for s in per_step if not s[2]] or per_step
    with ch.phase("sync"):
        tot = ch.allreduce_values([np.mean([s[0] for s in per_step]),
                                   np.mean([s[1] for s in per_step]),
                                   np.mean([s[0] for s in reuse])])
    P, s = ch.size, np.dtype(args.dtype).itemsize
    return dict(scheme="oktopk-traffic", P=P, n=n, k=ok.k, dtype=args.dtype, steps=steps,
                density=args.density, bytes_per_rank=tot[0] / P, messages_per_rank=tot[1] / P,
                reuse_bytes_per_rank=tot[2] / P, bound_bytes=cm.oktopk_bound(ok.k, s, P)[0],
                lower_bound_bytes=cm.sparse_lower_bound(ok.k, s, P))


def print_traffic(r):
    print(f"oktopk traffic over {r['steps']} steps (P={r['P']}, n={r['n']}, k={r['k']}, "
          f"{r['dtype']}): mean {r['bytes_per_rank'] / 1e6:.4f} MB/rank/step "
          f"({r['bytes_per_rank'] / r['bound_bytes']:.3f} x the bound 3k(P-1)/P entries = "
          f"{r['bound_bytes'] / 1e6:.4f} MB; {r['bytes_per_rank'] / r['lower_bound_bytes']:.2f} "
          f"x the lower bound), {r['messages_per_rank']:.2f} messages; reuse steps only "
          f"{r['reuse_bytes_per_rank'] / 1e6:.4f} MB")
