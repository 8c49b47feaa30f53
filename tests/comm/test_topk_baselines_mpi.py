"""TopkA and gTop-k against float64 references of their definitions, and
their counted traffic against the cost model.

One launch of 8 ranks tests every world size 1..8 (gTop-k: 1, 2, 4, 8) on
sub-communicators; the training algorithms run on a 4-rank sub-communicator.
"""
import copy

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.gtopk import gtopk
from mpidsgd.comm.topka import topka
from mpiutil import assert_all, sub_comms

N, K = 203, 17


# ---------------------------------------------------------------- references

def inputs(P, n=N, seed=5):
    """Every rank's (g, e), drawn from one seed so each rank can build all of
    them. Indices 3, 50 and 120 are large on every rank (duplicates across
    ranks); some entries tie in magnitude (ties go to the lower index)."""
    rng = np.random.default_rng([seed, P])
    g = rng.standard_normal((P, n))
    e = 0.3 * rng.standard_normal((P, n))
    g[:, [3, 50, 120]] += 10.0 * np.sign(rng.standard_normal(3))
    g[:, 7] = 4.0 - e[:, 7]
    g[:, 9] = -4.0 - e[:, 9]
    return g, e


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


def run(fn, sub, g, e, k, dtype=np.float64):
    ch = Channel(sub, backend=Backend("cpu"))
    r = sub.rank
    grad = g[r].astype(dtype)
    res = e[r].astype(dtype)
    out = fn(grad, res, k, channel=ch)
    return out, res, ch.counters.snapshot()


def same_everywhere(x, sub):
    allx = sub.allgather(x)
    return all(np.array_equal(a, allx[0]) for a in allx)


# ---------------------------------------------------------------- collectives

@pytest.mark.parallel(nprocs=8)
def test_topka_and_dense_ring_match_references_and_cost_model_P_1_to_8():
    check_topka_P_1_to_8()
    check_dense_ring_allreduce_P_1_to_8()


def check_topka_P_1_to_8():
    for P, sub in sub_comms(range(1, 9)):
        if sub == MPI.COMM_NULL:
            continue
        g, e = inputs(P)
        ref_out, ref_res = ref_topka(g, e, K)
        out, res, (b, m) = run(topka, sub, g, e, K)
        r = sub.rank
        ok = np.allclose(out, ref_out, rtol=1e-13, atol=1e-13)
        ok &= np.array_equal(res, ref_res[r])
        ok &= same_everywhere(out, sub)
        # the heavy common indices hold the average of all ranks' values
        ok &= np.isclose(out[50], np.mean(g[:, 50] + e[:, 50]), rtol=1e-13)
        ok &= b.get("train", 0) == cm.topka(K, 8, P)[0] == (P - 1) * K * 12
        ok &= m.get("train", 0) == cm.topka(K, 8, P)[1] == cm.log2ceil(P)
        # float32: 8 bytes per entry, results close to the float64 reference
        out32, _, (b32, m32) = run(topka, sub, g, e, K, np.float32)
        ok &= b32.get("train", 0) == cm.topka(K, 4, P)[0] == (P - 1) * K * 8
        ok &= np.allclose(out32, ref_out, rtol=1e-5, atol=1e-5)
        assert_all(ok, f"topka P={P}: max err {np.abs(out - ref_out).max()}, {b} {m}", comm=sub)


@pytest.mark.parallel(nprocs=8)
def test_gtopk_matches_dense_reference_and_cost_model_P_1_2_4_8():
    check_gtopk_P_1_2_4_8()
    # rank r's largest entries sit at indices no other rank has, so the tree
    # keeps only some of them: those merged away come back to their owner
    check_gtopk_restores_own_selection_merged_away()


def check_gtopk_P_1_2_4_8():
    for P, sub in sub_comms([1, 2, 4, 8]):
        if sub == MPI.COMM_NULL:
            continue
        g, e = inputs(P, seed=11)
        ref_out, ref_res = ref_gtopk(g, e, K)
        out, res, (b, m) = run(gtopk, sub, g, e, K)
        r = sub.rank
        ok = np.allclose(out, ref_out, rtol=1e-13, atol=1e-13)
        ok &= np.count_nonzero(out) == K
        ok &= np.array_equal(res, ref_res[r])
        ok &= same_everywhere(out, sub)
        rb, rm = cm.gtopk_rank(K, 8, P, r)
        ok &= b.get("train", 0) == rb and m.get("train", 0) == rm
        # mean over ranks and the critical path of the cost model
        tot_b = sub.allreduce(b.get("train", 0.0))
        tot_m = sub.allreduce(m.get("train", 0))
        ok &= np.isclose(tot_b / P, cm.gtopk(K, 8, P)[0]) and np.isclose(tot_m / P, cm.gtopk(K, 8, P)[1])
        ok &= cm.gtopk_path(K, 8, P) == (2 * cm.log2ceil(P) * K * 12.0, 2 * cm.log2ceil(P))
        assert_all(ok, f"gtopk P={P}: max err {np.abs(out - ref_out).max()}, {b} {m}", comm=sub)


def check_gtopk_restores_own_selection_merged_away():
    for P, sub in sub_comms([4]):
        if sub == MPI.COMM_NULL:
            continue
        n, k = 64, 4
        g = np.zeros((P, n))
        for r in range(P):
            g[r, 10 * r:10 * r + k] = np.arange(1, k + 1) * (r + 1)
        e = np.zeros((P, n))
        ref_out, ref_res = ref_gtopk(g, e, k)
        out, res, _ = run(gtopk, sub, g, e, k)
        r = sub.rank
        final = set(np.flatnonzero(out))
        mine = set(range(10 * r, 10 * r + k))
        ok = np.array_equal(out, ref_out) and np.array_equal(res, ref_res[r])
        # round 0 keeps {3, 11, 12, 13} and {22, 23, 32, 33}; round 1 the latter
        ok &= final == {22, 23, 32, 33}
        ok &= np.array_equal(res[sorted(mine - final)], g[r, sorted(mine - final)])
        assert_all(ok, f"rank {r}: final {sorted(final)} residual {res[res != 0]}", comm=sub)


# ---------------------------------------------------------------- training algorithms

def build(sub, algo, steps, extra=(), hidden=(16,)):
    from mpidsgd.catalog import load_config
    from mpidsgd.topology import Topology
    from mpidsgd.train import build as build_run
    sets = [f"algo.name='{algo}'", f"run.steps={steps}", "data.n_samples=1024",
            "data.n_test=64", "data.n_features=8", "data.n_classes=3", "data.batch_size=16",
            f"model.hidden={list(hidden)}", "algo.lr=0.1", "algo.momentum=0.9",
            "algo.weight_decay=1e-3", "run.dtype='float64'"] + list(extra)
    cfg = load_config(None, sets)
    return build_run(cfg, Topology(sub))


def train(ctx, steps):
    algo, shard = ctx["algo"], ctx["data"].train
    for _ in range(steps):
        algo.step(shard)
    return algo


@pytest.mark.parallel(nprocs=8)
def test_algorithms_identical_params_density_one_equals_sgd_and_resume_bitwise():
    for P, sub in sub_comms([4]):
        if sub == MPI.COMM_NULL:
            continue
        ok, why = True, []
        dense = train(build(sub, "sgd", 4), 4).params.copy()
        for name in ("topka", "gtopk"):
            # density 1: every entry is selected, the result is the dense mean
            full = train(build(sub, name, 4, ["algo.density=1.0"]), 4)
            good = np.allclose(full.params, dense, rtol=1e-12, atol=1e-12)
            good &= not full.sparse.residual().any()
            # sparse: parameters identical on all ranks, residuals differ
            a = train(build(sub, name, 6, ["algo.density=0.05", "algo.warmup_dense_steps=1"]), 6)
            good &= same_everywhere(a.params, sub) and not same_everywhere(a.sparse.residual(), sub)
            good &= not np.allclose(a.params, dense)
            # resume from state_dict at step 3 continues bit for bit
            b = train(build(sub, name, 6, ["algo.density=0.05", "algo.warmup_dense_steps=1"]), 3)
            state = copy.deepcopy(b.state_dict())      # nested sections copied too
            ctx = build(sub, name, 6, ["algo.density=0.05", "algo.warmup_dense_steps=1"])
            c = ctx["algo"]
            c.load_state_dict(state)
            shard = ctx["data"].train
            for _ in range(3):          # replay the data order of the first 3 steps
                shard.next_batch()
            train(ctx, 3)
            good &= np.array_equal(c.params, a.params) and np.array_equal(c.sparse.residual(), a.sparse.residual())
            ok &= good
            why.append(f"{name}: {good}")
        assert_all(ok, "; ".join(why), comm=sub)


def check_dense_ring_allreduce_P_1_to_8():
    from mpidsgd.comm.dense import ring_allreduce_sum
    for P, sub in sub_comms(range(1, 9)):
        if sub == MPI.COMM_NULL:
            continue
        ok = True
        for n in (3, 37, 1000):         # n < P: empty chunks; uneven chunks
            ch = Channel(sub)
            rng = np.random.default_rng([n, P])
            xs = rng.standard_normal((P, n))
            y = xs[sub.rank].copy()
            ring_allreduce_sum(y, channel=ch)
            ok &= np.allclose(y, xs.sum(0), rtol=1e-13, atol=1e-13) and same_everywhere(y, sub)
            b, m = ch.counters.bytes.get("train", 0.0), ch.counters.messages.get("train", 0)
            mean_b = sub.allreduce(b) / P
            ok &= np.isclose(mean_b, cm.dense_ring(n, 8, P)[0]) and m == cm.dense_ring(n, 8, P)[1]
        assert_all(ok, f"ring P={P}", comm=sub)
