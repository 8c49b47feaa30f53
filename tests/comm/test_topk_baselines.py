"""Serial checks of the topka/gtopk baselines: cost-model figures against
hand counts, the gTop-k merge, single-rank behaviour, config errors."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C

from mpidsgd.catalog import load_config, validate
from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.gtopk import gtopk, merge_topk
from mpidsgd.comm.topka import topka


def test_topka_cost_by_hand():
    # TopkA, P = 8, k = 100 float32 entries: 7 * 100 * 8 bytes, 3 messages
    assert cm.topka(100, 4, 8) == (5600.0, 3)
    assert cm.topka(100, 8, 1) == (0.0, 0)


def gtopk_sends_P8():
    """gTop-k, P = 8: every rank but the root sends once in the tree; in the
    binomial broadcast round j, ranks r < 2^j send to r + 2^j."""
    sent = {r: 0 for r in range(8)}
    for r in range(1, 8):
        sent[r] += 1                                  # every non-root merges once
    for j in range(3):
        for r in range(2 ** j):
            sent[r] += 1
    return sent


def test_gtopk_cost_per_rank_by_hand():
    sent = gtopk_sends_P8()
    for r in range(8):
        assert cm.gtopk_rank(10, 4, 8, r) == (sent[r] * 80.0, sent[r])


def test_gtopk_mean_cost_by_hand():
    sent = gtopk_sends_P8()
    assert sum(sent.values()) == 14 and cm.gtopk(10, 4, 8) == (14 / 8 * 80, 14 / 8)


def test_gtopk_critical_path_by_hand():
    assert cm.gtopk_path(10, 4, 8) == (6 * 80.0, 6)


def test_sparse_lower_bound_and_spardl_sending_twice_it():
    # lower bound: k(P-1)/P entries; SparDL d = 1 sends exactly twice that
    assert cm.sparse_lower_bound(800, 4, 8) == 700 * 8
    c, k_b = cm.spardl_block(8000, 8, 0.1)
    assert cm.spardl(8000, 4, 8, 0.1)[0] == 2 * cm.sparse_lower_bound(8 * k_b, 4, 8)


def test_oktopk_bound_by_hand():
    assert cm.oktopk_bound(800, 4, 8) == (3 * 700 * 8, 2 * 8 + 6)


def _ref_merge(a_idx, a_val, b_idx, b_val, k):
    d = {}
    for i, v in zip(a_idx, a_val):
        d[int(i)] = d.get(int(i), 0.0) + float(v)
    for i, v in zip(b_idx, b_val):
        d[int(i)] = d.get(int(i), 0.0) + float(v)
    keep = sorted(sorted(d, key=lambda i: (-abs(d[i]), i))[:k])
    return keep, [d[i] for i in keep]


def test_gtopk_merge_adds_common_indices_and_cuts_to_k():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n, k = 50, 6
        a_idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
        b_idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
        a_val, b_val = rng.standard_normal(k), rng.standard_normal(k)
        if trial % 2 and a_idx[0] not in b_idx:   # force a cancellation and a tie
            b_idx[0] = a_idx[0]
            order = np.argsort(b_idx)
            b_idx, b_val = b_idx[order], b_val[order]
            j = int(np.flatnonzero(b_idx == a_idx[0])[0])
            b_val[j] = -a_val[0]
            b_val[(j + 1) % k] = a_val[1]
        idx, val = merge_topk(a_idx, a_val, b_idx, b_val, k, np)
        ref_idx, ref_val = _ref_merge(a_idx, a_val, b_idx, b_val, k)
        assert idx.tolist() == ref_idx and np.array_equal(val, ref_val)
        assert idx.dtype == np.int32


@pytest.mark.parametrize("fn", [topka, gtopk])
def test_single_rank_is_local_topk_with_error_feedback(fn):
    rng = np.random.default_rng(1)
    g, e = rng.standard_normal(40), rng.standard_normal(40)
    acc = g + e
    keep = np.sort(np.argsort(-np.abs(acc), kind="stable")[:5])
    res = e.copy()
    ch = Channel(MPI.COMM_SELF)
    out = fn(g, res, 5, channel=ch)
    want = np.zeros(40)
    want[keep] = acc[keep]
    assert np.array_equal(out, want)
    assert np.array_equal(res + out, acc) and np.count_nonzero(res[keep]) == 0
    assert ch.counters.bytes.get("train", 0) == 0


@pytest.mark.parametrize("fn", [topka, gtopk])
def test_k_out_of_range_is_an_error(fn):
    with pytest.raises(ValueError, match="k = 0"):
        fn(np.ones(4), np.zeros(4), 0, channel=Channel(MPI.COMM_SELF))


@pytest.mark.parametrize("name", ["topka", "gtopk"])
def test_options_and_errors_name_the_key(name):
    cfg = load_config(None, [f"algo.name='{name}'", "run.steps=1", "algo.density=0.05",
                        "algo.warmup_dense_steps=3"])
    assert cfg.algo.options.density == 0.05 and cfg.algo.options.warmup_dense_steps == 3
    assert load_config(None, [f"algo.name='{name}'", "run.steps=1"]).algo.options.density == 0.01
    with pytest.raises(C.ConfigError, match="algo.density"):
        load_config(None, [f"algo.name='{name}'", "run.steps=1", "algo.density=0"])
    with pytest.raises(C.ConfigError, match="algo.warmup_dense_steps"):
        load_config(None, [f"algo.name='{name}'", "run.steps=1", "algo.warmup_dense_steps=-1"])
    with pytest.raises(C.ConfigError, match="algo.teams"):
        load_config(None, [f"algo.name='{name}'", "run.steps=1", "algo.teams=2"])


def test_gtopk_needs_a_power_of_two_world():
    cfg = load_config(None, ["algo.name='gtopk'", "run.steps=1"])
    for p in (1, 2, 4, 8, 64):
        validate(cfg, p)
    for p in (3, 6, 12):
        with pytest.raises(C.ConfigError, match="algo.name: gtopk needs a power-of-two"):
            validate(cfg, p)
        # the same rule at load time, as train.setup runs it
        with pytest.raises(C.ConfigError, match="algo.name: gtopk needs a power-of-two"):
            load_config(None, ["algo.name='gtopk'", "run.steps=1"], world_size=p)
    validate(load_config(None, ["algo.name='topka'", "run.steps=1"]), 3)


@pytest.fixture(scope="module")
def bench_records(tmp_path_factory):
    """`python -m mpidsgd.bench collectives` on 4 ranks, once: its records
    (n = 1000, density 0.05, without and with alpha-beta emulation)."""
    import json
    import os
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("collectives") / "c.json"
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", "4", sys.executable, "-m",
           "mpidsgd.bench", "collectives", "--n", "1000", "--density", "0.05", "--reps", "1",
           "--emulate", "none", "--emulate", "1e-6,1e-9", "--json", str(out)]
    env = {**os.environ, "MPIEXEC_TIMEOUT": "240"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_bench_collectives_runs_every_scheme_under_both_emulations(bench_records):
    names = {r["scheme"] for r in bench_records}
    assert names == {"dense-mpi", "dense-ring", "topka", "gtopk", "spardl", "spardl-d2-bsag",
                     "spardl-d2-rsag", "spardl-d4-bsag", "spardl-d4-rsag", "oktopk", "oktopk-exact"}
    assert len(bench_records) == 2 * len(names)


def test_bench_collectives_counted_bytes_equal_the_prediction(bench_records):
    # Ok-Topk: the cost model on each call's sizes
    for r in bench_records:
        assert r["bytes_per_rank"] == pytest.approx(r["predicted_bytes"], rel=1e-12), r


def test_bench_collectives_predicts_time_only_with_a_latency(bench_records):
    for r in bench_records:
        assert (r["predicted_ms"] is None) == (r["alpha"] == 0), r


def test_bench_collectives_spardl_d1_sends_2_k_b_per_peer_in_2_log2_P_messages(bench_records):
    sp = next(r for r in bench_records if r["scheme"] == "spardl")
    k_b = cm.spardl_block(1000, 4, 0.05)[1]
    assert sp["bytes_per_rank"] == 2 * k_b * 3 * 8 and sp["messages_per_rank"] == 4
    assert sp["k"] == 4 * k_b and sp["lower_bound_bytes"] == sp["bytes_per_rank"] / 2


def test_bench_collectives_ratios_are_relative_to_dense_mpi(bench_records):
    assert all(r["ratio_vs_dense"] == 1.0 for r in bench_records if r["scheme"] == "dense-mpi")
