"""TopkA and gTop-k against float64 references of their definitions, and
their counted traffic against the cost model.

One launch of 8 ranks (a scenario, see tests/helpers/mpi_scenario.py) tests
every world size 1..8 (gTop-k: 1, 2, 4, 8) on sub-communicators; the training
algorithms run on a 4-rank sub-communicator. The scenario records every
rank's results, residuals and counted traffic; each claim is a serial test
that builds the reference and compares.
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
from mpi_scenario import allclose_excess, rank_hashes, run_scenario
from mpiutil import sub_comms
from refs.topk_ref import ref_gtopk, ref_topka

N, K = 203, 17
RING_NS = (3, 37, 1000)     # n < P: empty chunks; uneven chunks
ALGOS = ("topka", "gtopk")


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


def run(fn, sub, g, e, k, dtype=np.float64):
    ch = Channel(sub, backend=Backend("cpu"))
    r = sub.rank
    grad = g[r].astype(dtype)
    res = e[r].astype(dtype)
    out = fn(grad, res, k, channel=ch)
    return out, res, ch.counters.snapshot()


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


# ---------------------------------------------------------------- the scenario

def gathered(sub, **arrays):
    """Every rank's arrays (as lists) and train-phase counters."""
    return {k: sub.allgather(np.asarray(v).tolist()) for k, v in arrays.items()}


def observe_topka(sub):
    """TopkA in float64 and float32 on the shared inputs."""
    g, e = inputs(sub.size)
    out, res, (b, m) = run(topka, sub, g, e, K)
    out32, _, (b32, _) = run(topka, sub, g, e, K, np.float32)
    return {**gathered(sub, out=out, res=res, out32=out32),
            "bytes": sub.allgather(b.get("train", 0)), "messages": sub.allgather(m.get("train", 0)),
            "bytes32": sub.allgather(b32.get("train", 0))}


def observe_gtopk(sub):
    """gTop-k on the shared inputs (seed 11)."""
    g, e = inputs(sub.size, seed=11)
    out, res, (b, m) = run(gtopk, sub, g, e, K)
    return {**gathered(sub, out=out, res=res),
            "bytes": sub.allgather(b.get("train", 0.0)), "messages": sub.allgather(m.get("train", 0))}


def merged_away_inputs(P=4, n=64, k=4):
    """Rank r's largest entries sit at indices no other rank has."""
    g = np.zeros((P, n))
    for r in range(P):
        g[r, 10 * r:10 * r + k] = np.arange(1, k + 1) * (r + 1)
    return g, np.zeros((P, n)), k


def observe_gtopk_merged_away(sub):
    g, e, k = merged_away_inputs()
    out, res, _ = run(gtopk, sub, g, e, k)
    return gathered(sub, out=out, res=res)


def observe_ring(sub):
    """The dense ring allreduce of rank-local rows of a seeded matrix."""
    from mpidsgd.comm.dense import ring_allreduce_sum
    seen = {}
    for n in RING_NS:
        ch = Channel(sub)
        rng = np.random.default_rng([n, sub.size])
        y = rng.standard_normal((sub.size, n))[sub.rank].copy()
        ring_allreduce_sum(y, channel=ch)
        seen[str(n)] = {**gathered(sub, y=y),
                        "bytes": sub.allgather(ch.counters.bytes.get("train", 0.0)),
                        "messages": sub.allgather(ch.counters.messages.get("train", 0))}
    return seen


def observe_algorithm(sub, dense, name):
    """Density 1, 6 sparse steps, and 3 + 3 steps resumed from a state_dict."""
    full = train(build(sub, name, 4, ["algo.density=1.0"]), 4)
    sparse = ["algo.density=0.05", "algo.warmup_dense_steps=1"]
    a = train(build(sub, name, 6, sparse), 6)
    b = train(build(sub, name, 6, sparse), 3)
    state = copy.deepcopy(b.state_dict())      # nested sections (the optimizer's) copied too
    ctx = build(sub, name, 6, sparse)
    c = ctx["algo"]
    c.load_state_dict(state)
    for _ in range(3):          # replay the data order of the first 3 steps
        ctx["data"].train.next_batch()
    train(ctx, 3)
    E = a.sparse.residual()
    return {"full_excess_vs_sgd": sub.allgather(allclose_excess(full.params, dense, 1e-12)),
            "full_residual_nonzeros": sub.allgather(int(np.count_nonzero(full.sparse.residual()))),
            "params": rank_hashes(a.params, sub), "residual": rank_hashes(E, sub),
            "excess_vs_sgd": sub.allgather(allclose_excess(a.params, dense, 1e-5)),
            "resume_params_diff": sub.allgather(float(np.max(np.abs(c.params - a.params)))),
            "resume_residual_diff": sub.allgather(float(np.max(np.abs(c.sparse.residual() - E))))}


def observe_all(tmp):
    """Scenario on 8 ranks: the collectives for every P, the algorithms on 4."""
    seen = {"topka": {}, "ring": {}, "gtopk": {}, "algorithms": {}}
    for P, sub in sub_comms(range(1, 9)):
        if sub != MPI.COMM_NULL:
            seen["topka"][str(P)] = observe_topka(sub)
            seen["ring"][str(P)] = observe_ring(sub)
    for P, sub in sub_comms([1, 2, 4, 8]):
        if sub != MPI.COMM_NULL:
            seen["gtopk"][str(P)] = observe_gtopk(sub)
    for _, sub in sub_comms([4]):
        if sub != MPI.COMM_NULL:
            seen["merged_away"] = observe_gtopk_merged_away(sub)
            dense = train(build(sub, "sgd", 4), 4).params.copy()
            for name in ALGOS:
                seen["algorithms"][name] = observe_algorithm(sub, dense, name)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_all", 8, tmp_path_factory)


PS = [str(P) for P in range(1, 9)]
GTOPK_PS = ["1", "2", "4", "8"]


# ---------------------------------------------------------------- TopkA

@pytest.mark.parametrize("P", PS)
def test_topka_matches_the_float64_reference(obs, P):
    g, e = inputs(int(P))
    ref_out, ref_res = ref_topka(g, e, K)
    o = obs["topka"][P]
    for r in range(int(P)):
        assert np.allclose(o["out"][r], ref_out, rtol=1e-13, atol=1e-13), f"rank {r}"
        assert np.array_equal(o["res"][r], ref_res[r]), f"rank {r}"


@pytest.mark.parametrize("P", PS)
def test_topka_result_is_identical_on_every_rank(obs, P):
    outs = obs["topka"][P]["out"]
    assert all(x == outs[0] for x in outs)


@pytest.mark.parametrize("P", PS)
def test_topka_heavy_common_index_holds_the_average_of_all_ranks(obs, P):
    g, e = inputs(int(P))
    for out in obs["topka"][P]["out"]:
        assert np.isclose(out[50], np.mean(g[:, 50] + e[:, 50]), rtol=1e-13)


@pytest.mark.parametrize("P", PS)
def test_topka_books_the_cost_model(obs, P):
    o, p = obs["topka"][P], int(P)
    assert cm.topka(K, 8, p) == ((p - 1) * K * 12, cm.log2ceil(p))
    assert o["bytes"] == [cm.topka(K, 8, p)[0]] * p
    assert o["messages"] == [cm.topka(K, 8, p)[1]] * p


@pytest.mark.parametrize("P", PS)
def test_topka_float32_books_8_bytes_per_entry(obs, P):
    p = int(P)
    assert obs["topka"][P]["bytes32"] == [cm.topka(K, 4, p)[0]] * p == [(p - 1) * K * 8] * p


@pytest.mark.parametrize("P", PS)
def test_topka_float32_is_close_to_the_float64_reference(obs, P):
    g, e = inputs(int(P))
    ref_out, _ = ref_topka(g, e, K)
    for out32 in obs["topka"][P]["out32"]:
        assert np.allclose(out32, ref_out, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gTop-k

@pytest.mark.parametrize("P", GTOPK_PS)
def test_gtopk_matches_the_float64_reference(obs, P):
    g, e = inputs(int(P), seed=11)
    ref_out, ref_res = ref_gtopk(g, e, K)
    o = obs["gtopk"][P]
    for r in range(int(P)):
        assert np.allclose(o["out"][r], ref_out, rtol=1e-13, atol=1e-13), f"rank {r}"
        assert np.count_nonzero(o["out"][r]) == K
        assert np.array_equal(o["res"][r], ref_res[r]), f"rank {r}"


@pytest.mark.parametrize("P", GTOPK_PS)
def test_gtopk_result_is_identical_on_every_rank(obs, P):
    outs = obs["gtopk"][P]["out"]
    assert all(x == outs[0] for x in outs)


@pytest.mark.parametrize("P", GTOPK_PS)
def test_gtopk_books_each_ranks_cost_model_figures(obs, P):
    o, p = obs["gtopk"][P], int(P)
    for r in range(p):
        assert (o["bytes"][r], o["messages"][r]) == cm.gtopk_rank(K, 8, p, r), f"rank {r}"


@pytest.mark.parametrize("P", GTOPK_PS)
def test_gtopk_mean_traffic_and_critical_path_match_the_cost_model(obs, P):
    o, p = obs["gtopk"][P], int(P)
    assert np.isclose(sum(o["bytes"]) / p, cm.gtopk(K, 8, p)[0])
    assert np.isclose(sum(o["messages"]) / p, cm.gtopk(K, 8, p)[1])
    assert cm.gtopk_path(K, 8, p) == (2 * cm.log2ceil(p) * K * 12.0, 2 * cm.log2ceil(p))


def test_gtopk_tree_keeps_the_largest_merged_entries(obs):
    g, e, k = merged_away_inputs()
    ref_out, ref_res = ref_gtopk(g, e, k)
    o = obs["merged_away"]
    for r in range(4):
        assert np.array_equal(o["out"][r], ref_out) and np.array_equal(o["res"][r], ref_res[r])
        # round 0 keeps {3, 11, 12, 13} and {22, 23, 32, 33}; round 1 the latter
        assert set(np.flatnonzero(o["out"][r])) == {22, 23, 32, 33}


def test_gtopk_selection_merged_away_comes_back_to_its_owner(obs):
    g, _, k = merged_away_inputs()
    o = obs["merged_away"]
    for r in range(4):
        res = np.asarray(o["res"][r])
        lost = sorted(set(range(10 * r, 10 * r + k)) - set(np.flatnonzero(o["out"][r])))
        assert np.array_equal(res[lost], g[r, lost]), f"rank {r}"


# ---------------------------------------------------------------- dense ring

@pytest.mark.parametrize("P", PS)
@pytest.mark.parametrize("n", [str(n) for n in RING_NS])
def test_dense_ring_allreduce_sums_identically_on_every_rank(obs, P, n):
    ys = obs["ring"][P][n]["y"]
    xs = np.random.default_rng([int(n), int(P)]).standard_normal((int(P), int(n)))
    for y in ys:
        assert np.allclose(y, xs.sum(0), rtol=1e-13, atol=1e-13) and y == ys[0]


@pytest.mark.parametrize("P", PS)
@pytest.mark.parametrize("n", [str(n) for n in RING_NS])
def test_dense_ring_allreduce_books_the_cost_model(obs, P, n):
    o, p = obs["ring"][P][n], int(P)
    assert np.isclose(sum(o["bytes"]) / p, cm.dense_ring(int(n), 8, p)[0])
    assert o["messages"] == [cm.dense_ring(int(n), 8, p)[1]] * p


# ---------------------------------------------------------------- training algorithms

@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_density_one_is_sgd(obs, name):
    # every entry is selected: the result is the dense mean, no residual
    o = obs["algorithms"][name]
    assert max(o["full_excess_vs_sgd"]) <= 1e-12
    assert o["full_residual_nonzeros"] == [0] * 4


@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_params_identical_residuals_rank_local(obs, name):
    o = obs["algorithms"][name]
    assert len(set(o["params"])) == 1 and len(set(o["residual"])) > 1


@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_sparse_run_differs_from_sgd(obs, name):
    # not np.allclose(params, sgd's) on any rank (default rtol 1e-5, atol 1e-8)
    assert min(obs["algorithms"][name]["excess_vs_sgd"]) > 1e-8


@pytest.mark.parametrize("name", ALGOS)
def test_algorithm_resume_from_state_dict_is_bitwise(obs, name):
    o = obs["algorithms"][name]
    assert o["resume_params_diff"] == [0.0] * 4 and o["resume_residual_diff"] == [0.0] * 4
