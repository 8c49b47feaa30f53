"""Serial checks of Ok-Topk: the cost model's hand-computed figures, option
validation, and the single-rank collective (P = 1: no traffic, the result is
the thresholded accumulator)."""
import contextlib
import io
import json

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C

from mpidsgd.catalog import load_config
from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.oktopk import OkTopk, check_oktopk


def test_allgatherv_booking_is_every_block_but_the_next_ranks():
    assert cm.allgatherv_booking([10, 20, 30, 40], 4, 0) == (80.0, 2)
    assert cm.allgatherv_booking([10, 20, 30, 40], 4, 3) == (90.0, 2)
    assert cm.allgatherv_booking([7], 1, 0) == (0.0, 0)
    # equal blocks: the allgather rule
    assert cm.allgatherv_booking([8] * 5, 5, 2) == cm.allgather_booking(8, 5)


def test_oktopk_phases_by_hand():
    # P = 4, float32 (8-byte entries), rank 1 sends 30 entries, gathers 5/6/7/8
    ph = cm.oktopk_phases(4, 4, 1, sent=30, gathered=[5, 6, 7, 8], rebalance=True)
    assert ph["regions"] == (2 * 3 / 4 * 24, 4)              # allreduce of 3 int64
    assert ph["split"] == (240.0, 3)
    assert ph["gather"] == (3 * 8 + (5 + 6 + 8) * 8, 2 + 2)  # counts, then all but rank 2's
    assert cm.oktopk(4, 4, 1, sent=30, gathered=[5, 6, 7, 8], rebalance=False) == (
        240.0 + 24 + 152, 3 + 4)
    assert cm.oktopk_phases(1, 8, 0, sent=0, gathered=[3], rebalance=True)["gather"] == (0.0, 0)


def test_oktopk_mean_scaled_from_measured_entries_meets_the_bound_at_ratio_1_and_2():
    k, P = 1000, 16
    b, m = cm.oktopk_mean(k, 4, P, sent_per_k=1.0, gathered_per_k=2.0, rebalance_share=0)
    assert b == pytest.approx(cm.oktopk_bound(k, 4, P)[0] + 8 * (P - 1))
    assert m == (P - 1) + 2 * 4


@pytest.mark.parametrize("args,key", [((0.0, 32, 64, 4), "density"), ((1.5, 32, 64, 4), "density"),
                                      ((0.01, 0, 64, 4), "threshold_every"),
                                      ((0.01, 32, 0, 4), "region_every"),
                                      ((0.01, 32, 64, 0), "throttle")])
def test_bad_options_name_the_key(args, key):
    assert check_oktopk(*args).startswith(f"{key}:")
    sets = ["algo.name='oktopk'", f"algo.density={args[0]}", f"algo.threshold_every={args[1]}",
            f"algo.region_every={args[2]}", f"algo.throttle={args[3]}", "run.steps=1"]
    with pytest.raises(C.ConfigError, match=f"algo.{key}"):
        load_config(None, sets)
    with pytest.raises(ValueError):
        OkTopk(10, np.float32, *args[:1], channel=Channel(MPI.COMM_SELF),
               threshold_every=args[1], region_every=args[2], throttle=args[3])


@pytest.fixture(scope="module")
def single_rank():
    """One Ok-Topk allreduce at P = 1, density 0.1 of 50 entries: (g, out, ok)."""
    n = 50
    g = np.arange(n, dtype=np.float64) - 20.0        # |g| largest at the end
    ok = OkTopk(n, np.float64, 0.1, channel=Channel(MPI.COMM_SELF))
    out = ok.allreduce(g.copy())
    return g, out, ok


def test_single_rank_result_is_the_top_k(single_rank):
    g, out, _ = single_rank
    top = np.argsort(-np.abs(g), kind="stable")[:5]
    assert np.array_equal(np.flatnonzero(out), np.sort(top))
    assert np.array_equal(out[top], g[top])


def test_single_rank_rest_stays_in_the_residual(single_rank):
    g, out, ok = single_rank
    assert np.array_equal(ok.E + out, g)             # nothing lost


def test_single_rank_sends_nothing(single_rank):
    assert single_rank[2].channel.counters.bytes.get("train", 0.0) == 0.0


def test_single_rank_state_counts_one_step_over_the_whole_range(single_rank):
    st = single_rank[2].state_dict()
    assert st["oktopk_t"][0] == 1 and st["oktopk_bounds"].tolist() == [0, 50]


def test_bench_costmodel_expands_p_ranges():
    from mpidsgd.bench.costmodel import expand_p
    assert expand_p("8,16,...,1024") == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert expand_p("2,3,5") == [2, 3, 5]


@pytest.fixture(scope="module")
def costmodel(tmp_path_factory):
    """`bench costmodel --no-compute` with an oktopk `bench collectives`
    record, once: (exit code, predictions by (P, scheme), stdout)."""
    from mpidsgd.bench import main
    tmp_path = tmp_path_factory.mktemp("costmodel")
    rec = tmp_path / "coll.json"
    rec.write_text('{"scheme": "oktopk", "P": 8, "n": 65536, "k": 655, '
                   '"sent_entries": 573.125, "gathered_entries": 1310.0}\n')
    out = tmp_path / "pred.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["costmodel", "--P", "8,16,...,64", "--n", "2^20", "--alpha", "1e-5",
                   "--beta", "1e-9", "--no-compute", "--oktopk-json", str(rec),
                   "--json", str(out)])
    recs = {(r["P"], r["scheme"]): r for r in map(json.loads, out.read_text().splitlines())} \
        if rc == 0 else {}
    return rc, recs, printed.getvalue()


# every prediction is the cost model's messages * alpha + bytes * beta: the
# formulas the MPI tests check the counters against
def test_bench_costmodel_spardl_is_the_checked_formula(costmodel):
    rc, recs, _ = costmodel
    assert rc == 0
    for P in (8, 16, 32, 64):
        b, m = cm.spardl(2**20, 4, P, 0.01)
        assert recs[(P, "spardl")]["ms"] == pytest.approx(1e3 * (m * 1e-5 + b * 1e-9))


def test_bench_costmodel_oktopk_bound_is_the_checked_formula(costmodel):
    rc, recs, _ = costmodel
    assert rc == 0
    for P in (8, 16, 32, 64):
        b, m = cm.oktopk_bound(10485, 4, P)
        assert recs[(P, "oktopk-bound")]["ms"] == pytest.approx(1e3 * (m * 1e-5 + b * 1e-9))


def test_bench_costmodel_oktopk_measured_scales_the_recorded_entries(costmodel):
    rc, recs, _ = costmodel
    assert rc == 0
    for P in (8, 16, 32, 64):
        b, m = cm.oktopk_mean(10485, 4, P, sent_per_k=573.125 / (655 * 7 / 8), gathered_per_k=2.0)
        assert recs[(P, "oktopk-measured")]["bytes"] == pytest.approx(b)


def test_bench_costmodel_prints_spardl_against_the_oktopk_bound(costmodel):
    assert "spardl vs oktopk-bound" in costmodel[2]
