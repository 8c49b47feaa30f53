"""Ok-Topk collective under MPI against the plain serial simulation
(tests/refs/oktopk_ref.py), bit for bit: result, residual, both thresholds,
region boundaries, support. Each step also checks conservation of gradient
mass, identical results on all ranks, and that the Channel's counted bytes
and messages per phase equal comm/costmodel.oktopk_phases evaluated on the
step's actual sizes.

One 8-rank launch covers P = 1..8 (sub-communicators), float32 and float64,
ties, all zeros, one huge entry, n not divisible by P, throttle 1, 2 and 4,
exact steps, threshold-reuse steps and rebalances."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.oktopk import OkTopk
from mpiutil import assert_all, sub_comms
from refs.oktopk_ref import fresh_state, simulate


def gradients(kind, seed, P, n, dtype, steps):
    """Every rank's gradients for every step, from one seed (all ranks agree)."""
    rng = np.random.default_rng([seed, P, n])
    out = []
    for _ in range(steps):
        g = rng.standard_normal((P, n))
        if kind == "ties":         # few magnitudes: many ties at every threshold
            g = np.round(g * 2) / 2
        elif kind == "zeros":
            g = np.zeros((P, n))
        elif kind == "huge":       # one huge entry on one rank, the rest small
            g = 1e-3 * g
            g[0, n // 3] = 1e6
        elif kind == "sparse":     # mostly exact zeros: fewer than k nonzeros
            g = g * (rng.random((P, n)) < 0.02)
        out.append(g.astype(dtype))
    return out


def run_case(sub, n, density, dtype, kind="normal", steps=7, te=3, re=4, throttle=4, seed=0,
             exact_check=False):
    P, q = sub.size, sub.rank
    ch = Channel(sub)
    ok = OkTopk(n, dtype, density, channel=ch, threshold_every=te, region_every=re,
                throttle=throttle)
    st = fresh_state(P, n)
    E_ref = np.zeros((P, n), dtype)
    why = []
    tag = f"P={P} n={n} {np.dtype(dtype).name} {kind} te={te} re={re} thr={throttle}"
    for step, G in enumerate(gradients(kind, seed, P, n, dtype, steps)):
        ref = simulate(G, E_ref, st, density, te, re)
        E_old = ok.E.copy()
        b0, m0 = ch.counters.snapshot()
        out = ok.allreduce(G[q].copy())
        b1, m1 = ch.counters.snapshot()
        L = ok.last

        def check(cond, what):
            if not cond:
                why.append(f"{tag} step {step}: {what}")
        # the serial simulation, bit for bit
        check(np.array_equal(out, ref["out"]), "result differs from the serial simulation")
        check(np.array_equal(ok.E, ref["E"][q]), "residual differs from the serial simulation")
        check(np.array_equal(L["support"], ref["support"]), "global support differs")
        check(L["local_thr"] == ref["used"][q], "local threshold used differs")
        check(ok.local_thr == ref["state"]["local"][q], "nudged local threshold differs")
        check(ok.global_thr == ref["state"]["global"], "global threshold differs")
        check(ok.bounds.tolist() == ref["state"]["bounds"], "region boundaries differ")
        check(L["sent"] == ref["sent"][q] and L["gathered"] == ref["gathered"],
              "message sizes differ")
        # identical on all ranks
        allout = sub.allgather(out)
        check(all(np.array_equal(allout[0], o) for o in allout), "results differ across ranks")
        # conservation: sum_r E_new + P out = sum_r (g + E_old)
        Es = np.array(sub.allgather(ok.E.copy()), np.float64)
        Eo = np.array(sub.allgather(E_old), np.float64)
        lhs = Es.sum(0) + P * out.astype(np.float64)
        rhs = (G.astype(np.float64) + Eo).sum(0)
        scale = np.abs(G).max() + np.abs(Eo).max()
        check(np.abs(lhs - rhs).max() <= 8 * P * np.finfo(dtype).eps * scale, "mass not conserved")
        # counted traffic = cost model on the actual sizes, phase by phase
        pred = cm.oktopk_phases(P, np.dtype(dtype).itemsize, q, sent=L["sent"],
                                gathered=L["gathered"], rebalance=L["rebalance"])
        check(L["counted"] == pred, f"counted {L['counted']} != model {pred}")
        total = (b1.get("train", 0) - b0.get("train", 0), m1.get("train", 0) - m0.get("train", 0))
        # the running total is a float sum and the allreduce booking rule
        # 2(P-1)/P is fractional: equal to rounding
        tb, tm = cm.oktopk(P, np.dtype(dtype).itemsize, q, sent=L["sent"],
                           gathered=L["gathered"], rebalance=L["rebalance"])
        check(np.isclose(total[0], tb, rtol=1e-12, atol=1e-9) and total[1] == tm,
              f"step total {total} != model {(tb, tm)}")
        if exact_check:
            check_exact_selection(G, E_ref, ref, L, n, density, check)
        E_ref, st = ref["E"], ref["state"]
    return why


def check_exact_selection(G, E_old, ref, L, n, density, check):
    """Threshold every step, fixed regions: the global selection is the exact
    top-k (ties at the k-th value included) of the reduced sums over the
    union of what the local selections sent."""
    P = G.shape[0]
    k = max(1, int(np.floor(n * density)))
    A = G + E_old
    sums, sent = np.zeros(n, G.dtype), np.zeros(n, bool)
    for r in range(P):
        a = np.abs(A[r])
        kv = np.sort(a)[::-1][k - 1]
        sel = np.flatnonzero(a >= kv) if kv > 0 else np.flatnonzero(a > 0)
        sums[sel] += A[r, sel]
        sent[sel] = True
    u = np.flatnonzero(sent)
    mag = np.abs(sums[u])
    want = u[mag >= np.sort(mag)[::-1][k - 1]] if u.size >= k else u
    check(np.array_equal(L["support"], want), "global selection is not the exact top-k")
    check(not ref["rebalance"] or ref["state"]["t"] == 1, "regions were not fixed")


CASES = [dict(n=301, density=0.05, dtype=np.float64),
         dict(n=203, density=0.04, dtype=np.float32, kind="ties", throttle=2),
         dict(n=97, density=0.1, dtype=np.float32, kind="zeros", steps=3),
         dict(n=211, density=0.03, dtype=np.float64, kind="huge", throttle=1),
         dict(n=157, density=0.05, dtype=np.float32, kind="sparse", steps=4),
         dict(n=131, density=0.05, dtype=np.float64, te=1, re=1000, steps=4, exact_check=True),
         dict(n=19, density=1.0, dtype=np.float64, steps=3)]


@pytest.mark.parallel(nprocs=8)
def test_oktopk_P_1_to_8_matches_serial_reference_and_cost_model():
    for P, sub in sub_comms(range(1, 9)):
        if sub == MPI.COMM_NULL:
            continue
        why = []
        for kw in CASES:
            why += run_case(sub, **kw)
        assert_all(not why, "; ".join(why[:6]), comm=sub)


@pytest.mark.parallel(nprocs=3)
def test_oktopk_resume_is_bit_identical_across_exact_steps_and_rebalances():
    """The registry-wide sweep resumes oktopk with its defaults (no exact step
    or rebalance after the resume point); here short intervals put both after
    it, and a dense warm-up before it (the counter counts sparse steps)."""
    from resume_check import resume_matches, shared_dir
    sets = {"algo.name": "'oktopk'", "algo.momentum": 0.0, "algo.threshold_every": 3,
            "algo.region_every": 5, "algo.warmup_dense_steps": 2, "algo.density": 0.05}
    resume_matches(MPI.COMM_WORLD, shared_dir(), "oktopk", sets, "3")
