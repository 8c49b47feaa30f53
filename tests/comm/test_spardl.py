"""SparDL pieces that need no second rank: the SRS schedule, the cost model,
B-SAG's h rule, coalescing, P = 1 against the serial simulation, the
algorithm's config errors, and `spardl` vs `sgd` on one rank."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C

from mpidsgd.catalog import load_config
from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.spar_allgather import coalesce, next_h, pad_selection
from mpidsgd.comm.spar_reduce_scatter import LazySum, _runs, _take, srs_schedule
from mpidsgd.comm.spardl import SparDL
from refs.spardl_ref import simulate


SRS_P = list(range(1, 40)) + [64, 100, 127, 128, 129]


def srs_rounds(P, r):
    """Rank r's SRS rounds: (blocks it sends, blocks it receives) per round."""
    return [([(r + gap + j) % P for j in range(s)], {(r + j) % P for j in range(s)})
            for gap, s in srs_schedule(P)]


@pytest.mark.parametrize("P", SRS_P)
def test_srs_schedule_has_log2_rounds_moving_P_minus_1_blocks(P):
    sched = srs_schedule(P)
    assert len(sched) == cm.log2ceil(P)
    assert sum(s for _, s in sched) == P - 1


@pytest.mark.parametrize("P", SRS_P)
def test_srs_schedule_sends_every_other_block_once(P):
    for r in range(P):
        sent = set()
        for out, _ in srs_rounds(P, r):
            assert not sent & set(out) and r not in out
            sent |= set(out)
        assert sent == set(range(P)) - {r}


@pytest.mark.parametrize("P", SRS_P)
def test_srs_schedule_never_receives_a_block_after_sending_it(P):
    # blocks arriving in a round from r - gap: (r + j) mod P, j < s
    for r in range(P):
        sent = set()
        for out, arriving in srs_rounds(P, r):
            sent |= set(out)
            assert not sent & arriving


def test_round_selection_is_batched_by_runs_and_equals_per_block():
    # a round's blocks are consecutive mod P: one batched selection per run,
    # split where the list wraps and where a block's gradient is already added
    P, c, k = 6, 50, 7
    rng = np.random.default_rng(0)
    E, g = rng.standard_normal((P, c)), rng.standard_normal(P * c - 20)   # last block short
    lazy = LazySum(E.copy(), g)
    lazy.ensure(4)
    assert _runs([3, 4, 5, 0, 1], lazy) == [(3, 1), (4, 2), (0, 2)]     # 4 added, 5 short
    assert _runs([4, 5, 0], None) == [(4, 2), (0, 1)]
    touched = []
    sels = list(_take(lazy.A, [3, 4, 5, 0, 1], k, touched, lazy))
    assert [b for b, _, _ in sels] == [3, 4, 5, 0, 1]
    full = E.reshape(-1).copy()
    full[:g.size] += g
    for b, idx, val in sels:
        want = np.sort(np.argsort(-np.abs(full[b * c:(b + 1) * c]), kind="stable")[:k])
        assert np.array_equal(idx, want) and np.array_equal(val, full[b * c + want])
        assert np.array_equal(lazy.A[b], full[b * c:(b + 1) * c])     # summed, not zeroed
    assert [t[0] for t in touched] == [3, 4, 5, 0, 1]
    assert lazy.todo == [False, False, True, False, False, False]


def test_spardl_block_sizes_by_hand():
    assert cm.spardl_block(10, 8, 0.01) == (2, 1)             # k_b clamps to 1
    assert cm.spardl_block(100, 1, 0.29) == (100, 29)         # no float floor surprise
    assert cm.spardl_block(37, 8, 1.0) == (5, 5)


def test_spardl_cost_is_the_d1_formula_for_P_1_to_12():
    for P in range(1, 13):
        for s in (4, 8):
            c, k_b = cm.spardl_block(10_000, P, 0.01)
            assert cm.spardl(10_000, s, P, 0.01) == (2.0 * k_b * (P - 1) * (4 + s), 2 * cm.log2ceil(P))
            assert cm.spardl(10_000, s, P, 0.01, batched=False)[1] == P - 1 + cm.log2ceil(P)


def test_spardl_cost_with_teams_by_hand():
    # teams: SRS + AG in a team of P' = 4, B-SAG (d-1) h, R-SAG k_b per step
    c, k_b = cm.spardl_block(1000, 4, 0.1)
    assert (c, k_b) == (250, 25)
    assert cm.spardl(1000, 4, 8, 0.1, teams=2) == ((6 * 25 + 1 * 12) * 8.0, 2 + 2 + 1)
    assert cm.spardl(1000, 4, 8, 0.1, teams=2, h=20) == ((6 * 25 + 20) * 8.0, 5)
    assert cm.spardl(1000, 8, 16, 0.1, teams=4, sag="recursive") == ((6 * 25 + 2 * 25) * 12.0, 6)


def test_spardl_time_is_messages_times_latency_plus_bytes_times_beta():
    t = cm.spardl_time(1000, 4, 8, 0.1, 1e-3, 1e-6, teams=2)
    assert t == pytest.approx(5e-3 + 162 * 8e-6)


def test_bsag_h_rule():
    # k_b = 40, d = 4: h_min = 10
    assert next_h(20, 41, 40, 4) == 16          # floor(0.8 h)
    assert next_h(11, 41, 40, 4) == 10          # not below h_min
    assert next_h(16, 39, 40, 4) == 20          # ceil(1.25 h)
    assert next_h(13, 39, 40, 4) == 17
    assert next_h(38, 10, 40, 4) == 40          # not above k_b
    assert next_h(17, 40, 40, 4) == 17
    assert next_h(1, 0, 1, 8) == 1


def test_coalesce_sums_repeated_indices_in_order_and_skips_padding():
    sels = [(np.array([1, 5, 7], np.int32), np.array([1.0, 2.0, 3.0])),
            (np.array([5, 9, -1], np.int32), np.array([10.0, 20.0, 0.0])),
            (np.array([1, 5], np.int32), np.array([100.0, 1000.0]))]
    idx, val = coalesce(sels, np)
    assert idx.tolist() == [1, 5, 7, 9]
    assert val.tolist() == [101.0, 1012.0, 3.0, 20.0]


def test_pad_selection_fills_with_index_minus_1_and_zeros():
    idx, val = np.array([1, 5], np.int32), np.array([101.0, 1012.0])
    pidx, pval = pad_selection(idx, val, 4, np)
    assert pidx.tolist() == [1, 5, -1, -1] and pval.tolist() == [101.0, 1012.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("density", [1.0, 0.1, 1e-5])
def test_one_rank_matches_simulation(dtype, density):
    rng = np.random.default_rng(3)
    n = 57
    ch = Channel(MPI.COMM_SELF)
    sd = SparDL(n, dtype, density, channel=ch)
    E = np.zeros((1, n), dtype)
    for _ in range(3):
        G = rng.standard_normal((1, n)).astype(dtype)
        ref = simulate(G, E, density)
        g = G[0].copy()
        sd.allreduce(g, out=g)                  # in place is allowed
        assert np.array_equal(g, ref["out"]) and np.array_equal(sd.residual(), ref["E"][0])
        assert sd.last["selected"] == sd.k_b == ref["k_b"]
        E = ref["E"]
    # one rank: no traffic at all
    assert sum(ch.counters.bytes.values()) == 0 and sum(ch.counters.messages.values()) == 0
    if density == 1.0:
        assert not sd.residual().any()


def test_state_dict_round_trip_continues_identically():
    ch = Channel(MPI.COMM_SELF)
    a = SparDL(20, np.float64, 0.2, channel=ch)
    a.allreduce(np.arange(20.0))
    st = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in a.state_dict().items()}
    b = SparDL(20, np.float64, 0.2, channel=ch)
    b.load_state_dict(st)
    g = np.linspace(-1, 1, 20)
    assert np.array_equal(a.allreduce(g), b.allreduce(g))
    assert np.array_equal(a.residual(), b.residual())


def test_load_state_dict_refuses_a_residual_of_another_size():
    b = SparDL(20, np.float64, 0.2, channel=Channel(MPI.COMM_SELF))
    with pytest.raises(ValueError, match="residual"):
        b.load_state_dict({"residual": np.zeros(21), "sag_h": 1})


def test_bad_arguments():
    ch = Channel(MPI.COMM_SELF)
    with pytest.raises(ValueError, match="density"):
        SparDL(10, np.float32, 0.0, channel=ch)
    with pytest.raises(ValueError, match="teams"):
        SparDL(10, np.float32, 0.1, channel=ch, teams=2)
    sd = SparDL(10, np.float32, 0.5, channel=ch)
    with pytest.raises(ValueError, match="dtype"):
        sd.allreduce(np.zeros(10))


# ---------------------------------------------------------------- the algorithm

def load(*sets):
    return load_config(None, ["algo.name='spardl'", "run.steps=2", *sets])


@pytest.mark.parametrize("sets, key", [
    (["algo.density=0.0"], "algo.density"),
    (["algo.density=1.5"], "algo.density"),
    (["algo.sag='ring'"], "algo.sag"),
    (["algo.teams=0"], "algo.teams"),
    (["algo.teams=3", "algo.sag='recursive'"], "algo.sag"),
    (["algo.warmup_dense_steps=-1"], "algo.warmup_dense_steps"),
    (["algo.bogus=1"], "algo.bogus"),
])
def test_config_errors_name_the_key(sets, key):
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        load(*sets)


def test_world_size_check_names_teams():
    from mpidsgd.catalog import validate
    cfg = load("algo.teams=3")
    with pytest.raises(C.ConfigError, match=r"algo\.teams"):
        validate(cfg, 8)
    validate(cfg, 12)
    cfg = load("algo.teams=4", "algo.sag='recursive'")
    validate(cfg, 8)


def build(algo, steps, *sets):
    from mpidsgd.topology import Topology
    from mpidsgd.train import build as build_run
    cfg = load_config(None, [f"algo.name='{algo}'", f"run.steps={steps}", "data.n_samples=512",
                        "data.n_test=64", "data.n_features=8", "data.n_classes=3",
                        "data.batch_size=16", "model.hidden=[12]", "algo.lr=0.1",
                        "algo.momentum=0.9", "algo.nesterov=true", "algo.weight_decay=1e-3",
                        "run.dtype='float64'", *sets])
    ctx = build_run(cfg, Topology(MPI.COMM_SELF))
    for _ in range(steps):
        ctx["algo"].step(ctx["data"].train)
    return ctx["algo"]


def test_one_rank_density_one_is_sgd_bit_for_bit():
    dense = build("sgd", 5)
    sp = build("spardl", 5, "algo.density=1.0")
    assert np.array_equal(sp.params, dense.params)
    s = sp.summary()
    assert s["k_b"] == sp.params.size and s["teams"] == 1 and s["density"] == 1.0


def test_cli_teams_not_dividing_world_exits_2_with_one_line(tmp_path):
    import os
    import subprocess
    import sys
    env = dict(os.environ)
    env.pop("_PYTEST_MPI_CHILD_PROCESS", None)
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "mpidsgd.train", "--set", "algo.name=spardl",
           "--set", "algo.teams=3", "--set", "run.steps=2", "--set", f"run.out_dir='{tmp_path}'"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "algo.teams" in lines[0] and "2" in lines[0], lines
