"""CentralVR's async mode and sync weak scaling under MPI, in one 8-rank
launch (a scenario, see tests/helpers/mpi_scenario.py):

- async for P = 2..8: termination, every message answered (sent = received
  at two quiescent points and at the end), the server's state equal to the
  weighted last reports of the workers, identical final parameters,
  convergence;
- async with a 3x slower rank reaching 1e-8 (P = 4);
- sync weak scaling: epochs to 1e-8 for P = 1, 2, 4, 8 within ±20%.

The scenario records every rank's counters, gaps and norms; each claim is a
serial test on them. The sync mode against its serial simulation is in
test_centralvr_mpi.py.
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.catalog import config_from_dict
from mpidsgd.topology import Topology
from mpidsgd.train import build
from centralvr_runs import gap, make, run_steps, within
from mpi_scenario import rank_hashes, run_scenario
from mpiutil import sub_comms

E = 20
ASYNC_PS = [str(P) for P in range(2, 9)]


def server_gaps(alg, sub):
    """Server (x, ḡ) against Σ_k w_k (last reported x_k, ḡ_k): gaps on rank
    0 (no report lost or doubled), None elsewhere."""
    lx = sub.gather(alg.last_x.copy() if sub.rank else None, root=0)
    lg = sub.gather(alg.last_g.copy() if sub.rank else None, root=0)
    if sub.rank:
        return None
    sx = sum(alg.weights[k] * lx[k] for k in range(1, sub.size))
    sg = sum(alg.weights[k] * lg[k] for k in range(1, sub.size))
    return [gap(alg.params, sx), gap(alg.gbar, sg)]


def observe_async(sub):
    """20 epochs of async CentralVR with two quiescent points: quiescent
    point 1 is inside the fill epoch (rank 1 has reported and waits at the
    averaged start, the other workers are mid-fill: no deadlock allowed);
    point 2 has every worker after 3.5 epochs. The server quiesces at once."""
    ctx, alg, shard = make(sub, "centralvr", "logreg", mode="async", n_per_rank=60, B=1,
                           epochs=E, lr=0.2, l2=0.1, d=6, seed=1, metric_every=2)
    o = {"synchronous": sub.allgather(repr(alg.synchronous)), "quiesce": [], "invariant": []}
    spe = shard.steps_per_epoch
    for target in (lambda r: spe if r == 1 else spe // 2, lambda r: 3 * spe + spe // 2):
        if sub.rank:
            run_steps(alg, shard, target(sub.rank) - alg.step_count)
        alg.quiesce()
        o["quiesce"].append(sub.allreduce(np.array([alg.sent, alg.received])).tolist())
        o["invariant"].append(server_gaps(alg, sub))
    while not alg.done():
        alg.step(shard)
    o["invariant"].append(server_gaps(alg, sub))
    alg.finish()
    s = alg.summary()
    o["messages"] = sub.allgather([int(s["async_messages_sent"]), int(s["async_messages_received"])])
    o["reports"] = sub.bcast(int(alg.reports) if sub.rank == 0 else None, root=0)
    o["params"] = rank_hashes(alg.params, sub)
    o["finite"] = sub.allgather(bool(np.isfinite(alg.params).all()))
    o["final_rel"] = sub.allgather(float(alg.final_rel))
    o["stale_metric"] = s["server_stale_rel_grad_norm"] if sub.rank == 0 else None
    return o


def observe_slow_rank(sub):
    """300 epochs at lr 0.3, rank 1 three times slower: every rank's final
    relative gradient norm. (l2 = 1e-2 as in the other tests: with 0.1, 160
    epochs at lr 0.2 ended at 2e-9..2.5e-8 run to run, so 1e-8 was not a
    safe bound. The arrival order varies run to run: 200 epochs at lr 0.3
    ended at 1e-11..1e-7 in eight runs, 300 epochs at 5e-15..9e-12 in nine.)"""
    task = {"n_features": 6, "n_classes": 2, "batch_size": 1, "samples_per_rank": 60, "n_test": 64}
    cfg = config_from_dict({"run": {"seed": 1, "epochs": 300, "dtype": "float64", "eval_every": 0},
                            "data": task, "model": {"name": "logreg", "l2": 1e-2},
                            "algo": {"name": "centralvr", "mode": "async", "lr": 0.3, "metric_every": 0},
                            "comm": {"emulate": {"slow_ranks": [1], "slowdown": 3.0}}})
    ctx = build(cfg, Topology(sub))
    alg, shard = ctx["algo"], ctx["data"].train
    while not alg.done():
        alg.step(shard)
    alg.finish()
    return sub.allgather(float(alg.final_rel))


def observe_weak_scaling(sub):
    """Fixed samples per rank and one step, logistic, l2 = 1e-2: every
    rank's first epoch at 1e-8 (None if not within 60 epochs)."""
    ctx, alg, shard = make(sub, "centralvr", "logreg", n_per_rank=160, B=2, epochs=60,
                           lr=0.25, d=8, seed=0, metric_every=1)
    while not alg.done() and not (alg.history and alg.history[-1][2] <= 1e-8):
        alg.step(shard)
    hit = next((e for e, _, r in alg.history if r <= 1e-8), None)
    return sub.allgather(None if hit is None else int(hit))


def observe_centralvr_8(tmp):
    """Scenario on 8 ranks: async for P = 2..8, the slow rank on 4, weak
    scaling for P = 1, 2, 4, 8."""
    seen = {"async": {}, "weak": {}}
    for P, sub in sub_comms(range(2, 9)):
        if sub != MPI.COMM_NULL:
            seen["async"][str(P)] = observe_async(sub)
    for _, sub in sub_comms([4]):
        if sub != MPI.COMM_NULL:
            seen["slow"] = observe_slow_rank(sub)
    for P, sub in sub_comms([1, 2, 4, 8]):
        if sub != MPI.COMM_NULL:
            seen["weak"][str(P)] = observe_weak_scaling(sub)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_centralvr_8", 8, tmp_path_factory, timeout=500)


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_mode_is_not_synchronous(obs, P):
    assert obs["async"][P]["synchronous"] == ["False"] * int(P)


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_every_message_is_received_at_each_quiescent_point(obs, P):
    for sent, received in obs["async"][P]["quiesce"]:
        assert sent == received


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_server_state_is_the_weighted_last_reports(obs, P):
    inv = obs["async"][P]["invariant"]
    assert len(inv) == 3 and all(within(point, 1e-11) for point in inv)


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_accounts_every_message(obs, P):
    # one report per worker epoch; reports, replies, and 2 markers per worker
    o, p = obs["async"][P], int(P)
    assert o["reports"] == (p - 1) * E
    for sent, received in o["messages"]:
        assert sent == received == 2 * (p - 1) * E + 2 * (p - 1)


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_final_params_are_identical_and_finite(obs, P):
    o = obs["async"][P]
    assert len(set(o["params"])) == 1 and all(o["finite"])


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_converges(obs, P):
    # 20 epochs bring every P below 1e-2 and one worker below 1e-6
    want = 1e-6 if P == "2" else 1e-2
    assert max(obs["async"][P]["final_rel"]) <= want


@pytest.mark.parametrize("P", ASYNC_PS)
def test_async_server_reports_the_stale_metric(obs, P):
    assert obs["async"][P]["stale_metric"] is not None


def test_async_with_a_three_times_slower_rank_reaches_1e8(obs):
    assert max(obs["slow"]) <= 1e-8, obs["slow"]


def test_sync_weak_scaling_reaches_1e8_for_every_P(obs):
    for P, hits in obs["weak"].items():
        assert None not in hits, f"P={P}: 1e-8 not reached in 60 epochs"


def test_sync_weak_scaling_epochs_to_1e8_within_20_percent_of_their_mean(obs):
    got = {P: hits[0] for P, hits in obs["weak"].items()}
    mean = sum(got.values()) / len(got)
    assert all(abs(e - mean) <= 0.2 * mean for e in got.values()), f"epochs to 1e-8 by P: {got}"
