"""asgd (parameter server, momentum at the server) under MPI, in-process on
sub-communicators of one 4-rank launch:

- groups = 1 equals `sgd` on the P - 1 worker ranks (same shards, batches,
  constant lr, momentum) to 1e-12 in float64;
- the staleness bookkeeping against a forced push order (τ per update,
  histogram, P(τ = 0), mean, implicit momentum, momentum = "auto");
- nothing lost with a 10x slower group and a quiescent checkpoint mid-run:
  every gradient a leader sent was applied once, replies balance, exactly
  run.steps updates, server step = sum of the leaders' steps;
- groups of two ranks quiesce and checkpoint without losing a step (5 ranks).

The 4-rank runs share one launch and the 5-rank run has its own (scenarios,
see tests/helpers/mpi_scenario.py); each records raw per-rank figures and
rank 0's summary, and each claim is a serial test on them.
"""
import json
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.algorithms.asgd import auto_momentum
from mpi_scenario import run_scenario
from mpiutil import sub_comms
from ps_runs import run_on, setup_on

COMM = MPI.COMM_WORLD


ORDER = [0, 1, 2, 2, 0, 1, 1, 1, 0, 2, 0, 0, 1]
STEPS_SLOW, STEPS_G2 = 120, 80


def observe_one_group(base):
    """asgd with groups = 1 on 4 ranks against sgd on 3."""
    ref = None
    for _, sub in sub_comms([3]):
        if sub != MPI.COMM_NULL:
            _, ctx = run_on(sub, os.path.join(base, "sgd"), {"algo.name": "sgd"})
            ref = ctx["algo"].params.copy()
    ref = COMM.bcast(ref, root=0)
    _, ctx = run_on(COMM, os.path.join(base, "asgd"), {"algo.name": "asgd", "algo.groups": 1})
    algo = ctx["algo"]
    x0 = np.zeros_like(ref)
    ctx["model"].init(x0, np.random.default_rng([5, 0x1D]))      # the run's start (run.seed 5)
    return {"err": COMM.allgather(float(np.max(np.abs(algo.consensus_params() - ref)))),
            "moved": float(np.max(np.abs(ref - x0))),
            "shard_sizes": COMM.allgather(int(ctx["data"].train.n)),
            "is_server": COMM.allgather(bool(algo.is_server)),
            "version": COMM.allgather(int(algo.version))}


def observe_forced_order(base, auto):
    """Updates in the forced ORDER of groups: every rank's staleness figures,
    the server's momentum per update."""
    sets = {"algo.name": "asgd", "run.steps": 100,
            "algo.momentum": '"auto"' if auto else 0.5, "algo.momentum_target": 0.8}
    cfg, ctx, topo, args = setup_on(COMM, os.path.join(base, f"f{auto}"), sets)
    algo, shard = ctx["algo"], ctx["data"].train
    mus = []
    for g in ORDER:
        if COMM.rank == algo.leaders[g] if not algo.is_server else False:
            algo.step(shard)
        if algo.is_server:
            before = algo.version
            while algo.version == before:
                algo.step(shard)
            mus.append(float(algo.mu_now))
        COMM.Barrier()
    algo.finish()
    st = algo.summary()
    keys = ("staleness_hist", "p_tau0", "staleness_mean", "implicit_momentum", "server_updates")
    figures = json.loads(json.dumps({k: st[k] for k in keys}, default=lambda v: v.item()))
    return {"summary": COMM.allgather(figures), "server_mus": mus if algo.is_server else None}


def observe_slow_group(base):
    """120 steps, rank 1 ten times slower, a checkpoint every 17 steps."""
    out = os.path.join(base, "slow")
    summ, ctx = run_on(COMM, out, {
        "algo.name": "asgd", "run.steps": STEPS_SLOW, "algo.momentum": 0.5,
        "run.dtype": '"float32"', "comm.emulate.slow_ranks": "[1]", "comm.emulate.slowdown": 10.0,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.001,
        "checkpoint.every": 17})
    c = ctx["algo"].consensus
    finite = COMM.allgather(c is not None and bool(np.isfinite(c).all()))
    if COMM.rank != 0:
        return None
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        recs = [json.loads(ln) for ln in fh]
    return {"summary": summ, "records": recs, "consensus_finite": finite}


def observe_asgd_4(tmp):
    """Scenario on 4 ranks: groups = 1 vs sgd, the forced order (momentum
    fixed and auto), the slow group with a checkpoint."""
    seen = observe_one_group(tmp)
    MPI.COMM_WORLD.Barrier()
    return {"one_group": seen,
            "forced": {str(auto): observe_forced_order(tmp, auto) for auto in (False, True)},
            "slow": observe_slow_group(tmp)}


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_asgd_4", 4, tmp_path_factory)


def test_one_group_equals_sgd_on_the_worker_ranks(obs):
    o = obs["one_group"]
    assert max(o["err"]) <= 1e-12 and o["moved"] > 1e-3, f"max diff {o['err']}, moved {o['moved']}"


def test_one_group_server_holds_no_data_and_workers_split_it(obs):
    # rank 0 held no training data; the three workers split all 384 samples
    assert obs["one_group"]["shard_sizes"] == [0, 128, 128, 128]


def test_one_group_server_applied_run_steps_updates(obs):
    o = obs["one_group"]
    assert [v for v, server in zip(o["version"], o["is_server"]) if server] == [20]


def expected_taus(order):
    """Serial bookkeeping: τ = version before the update - version the group read."""
    read, version, taus = {}, 0, []
    for g in order:
        taus.append(version - read.get(g, 0))
        version += 1
        read[g] = version
    return taus


@pytest.mark.parametrize("auto", ["False", "True"])
def test_forced_order_staleness_histogram(obs, auto):
    taus = expected_taus(ORDER)
    want = np.bincount(taus).tolist()
    for st in obs["forced"][auto]["summary"]:
        assert st["staleness_hist"] == want and st["p_tau0"] == want[0] / len(taus)
        assert st["server_updates"] == len(ORDER)


@pytest.mark.parametrize("auto", ["False", "True"])
def test_forced_order_staleness_mean_and_implicit_momentum(obs, auto):
    taus = expected_taus(ORDER)
    p0 = np.bincount(taus)[0] / len(taus)
    for st in obs["forced"][auto]["summary"]:
        assert abs(st["staleness_mean"] - np.mean(taus)) < 1e-15
        assert abs(st["implicit_momentum"] - (1 - p0)) < 1e-15


@pytest.mark.parametrize("auto", ["False", "True"])
def test_forced_order_server_momentum_per_update(obs, auto):
    # the momentum of update k comes from the τ of updates 0..k (its own included)
    taus = expected_taus(ORDER)
    exp = [auto_momentum(0.8, taus[:k + 1].count(0) / (k + 1)) if auto == "True" else 0.5
           for k in range(len(ORDER))]
    assert np.allclose(obs["forced"][auto]["server_mus"], exp, rtol=0, atol=1e-15)


def test_auto_momentum_formula():
    assert auto_momentum(0.9, 0.05) == pytest.approx(-0.05)
    assert auto_momentum(0.9, 1.0) == 0.9 and auto_momentum(-0.9, 0.0) == -0.9
    assert auto_momentum(0.5, None) == 0.5


def test_slow_group_every_push_is_applied_once(obs):
    s = obs["slow"]["summary"]
    pushes, got = s["ps_pushes_sent_by_rank"], s["ps_pushes_received_from_rank"]
    assert pushes == got and sum(pushes) == STEPS_SLOW == s["server_updates"]


def test_slow_group_replies_balance(obs):
    s = obs["slow"]["summary"]
    assert s["ps_replies_received_by_rank"] == s["ps_pushes_sent_by_rank"]
    assert s["ps_replies_sent"] == STEPS_SLOW


def test_slow_group_server_step_is_the_sum_of_worker_steps(obs):
    s = obs["slow"]["summary"]
    assert sum(s["worker_steps_by_rank"][1:]) == STEPS_SLOW and sum(s["staleness_hist"]) == STEPS_SLOW


def test_slow_group_checkpoints_and_logs_staleness(obs):
    recs = obs["slow"]["records"]
    assert sum(r["kind"] == "checkpoint" for r in recs) >= 1
    assert all("p_tau0" in r for r in recs if r["kind"] == "train")


def test_slow_group_consensus_is_finite_on_every_rank(obs):
    assert obs["slow"]["consensus_finite"] == [True] * 4


def observe_groups_of_two(tmp):
    """Scenario on 5 ranks: groups of 2, one slow group, a checkpoint every
    5 steps; every rank's step count and rank 0's summary and log.
    Members learn of each quiescent point at their own moment (the leader's
    command keeps the group's collectives matched)."""
    out = os.path.join(tmp, "g2")
    summ, ctx = run_on(COMM, out, {
        "algo.name": "asgd", "algo.groups": 2, "run.steps": STEPS_G2, "run.dtype": '"float32"',
        "comm.emulate.slow_ranks": "[3]", "comm.emulate.slowdown": 4.0,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.002,
        "checkpoint.every": 5})
    own = COMM.allgather(int(ctx["algo"].step_count))
    if COMM.rank != 0:
        return None
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        recs = [json.loads(ln) for ln in fh]
    return {"steps": own, "summary": summ, "records": recs}


@pytest.fixture(scope="module")
def g2(tmp_path_factory):
    return run_scenario(__file__, "observe_groups_of_two", 5, tmp_path_factory)


def test_groups_of_two_members_step_together_and_total_run_steps(g2):
    own = g2["steps"]
    assert own[1] == own[2] and own[3] == own[4] and own[1] + own[3] == STEPS_G2 == own[0]


def test_groups_of_two_every_leader_push_is_received(g2):
    s, own = g2["summary"], g2["steps"]
    assert s["ps_pushes_sent_by_rank"] == s["ps_pushes_received_from_rank"] == \
        [0, own[1], 0, own[3], 0]


def test_groups_of_two_checkpoint_and_log_every_step(g2):
    recs = g2["records"]
    assert sum(r["kind"] == "checkpoint" for r in recs) >= 1
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, STEPS_G2 + 1))
