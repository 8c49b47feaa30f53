"""asgd (parameter server, momentum at the server) under MPI, in-process on
sub-communicators of one 4-rank launch:

- groups = 1 equals `sgd` on the P - 1 worker ranks (same shards, batches,
  constant lr, momentum) to 1e-12 in float64;
- the staleness bookkeeping against a forced push order (τ per update,
  histogram, P(τ = 0), mean, implicit momentum, momentum = "auto");
- nothing lost with a 10x slower group and a quiescent checkpoint mid-run:
  every gradient a leader sent was applied once, replies balance, exactly
  run.steps updates, server step = sum of the leaders' steps.
"""
import json
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.algorithms.asgd import auto_momentum
from mpiutil import assert_all, sub_comms
from ps_runs import run_on, setup_on, shared_dir

COMM = MPI.COMM_WORLD


@pytest.mark.parallel(nprocs=4)
def test_one_group_equals_sgd_on_the_worker_ranks():
    base = shared_dir()
    ref = None
    for P, sub in sub_comms([3]):
        if sub != MPI.COMM_NULL:
            _, ctx = run_on(sub, os.path.join(base, "sgd"), {"algo.name": "sgd"})
            ref = ctx["algo"].params.copy()
    ref = COMM.bcast(ref, root=0)
    _, ctx = run_on(COMM, os.path.join(base, "asgd"), {"algo.name": "asgd", "algo.groups": 1})
    algo = ctx["algo"]
    got = algo.consensus_params()
    err = float(np.max(np.abs(got - ref)))
    x0 = np.zeros_like(ref)
    ctx["model"].init(x0, np.random.default_rng([5, 0x1D]))      # the run's start (run.seed 5)
    moved = float(np.max(np.abs(ref - x0)))
    assert_all(err <= 1e-12 and moved > 1e-3, f"asgd groups=1 vs sgd on 3 ranks: max diff {err}, "
                                              f"moved {moved}")
    # rank 0 held no training data; the three workers split all 384 samples
    n = COMM.allgather(ctx["data"].train.n)
    assert_all(n == [0, 128, 128, 128], f"shard sizes {n}")
    assert_all(algo.version == 20 or not algo.is_server, "server applied run.steps updates")


def expected_taus(order):
    """Serial bookkeeping: τ = version before the update - version the group read."""
    read, version, taus = {}, 0, []
    for g in order:
        taus.append(version - read.get(g, 0))
        version += 1
        read[g] = version
    return taus


@pytest.mark.parallel(nprocs=4)
def test_staleness_bookkeeping_in_a_forced_order():
    base = shared_dir()
    order = [0, 1, 2, 2, 0, 1, 1, 1, 0, 2, 0, 0, 1]
    taus = expected_taus(order)
    for auto in (False, True):
        sets = {"algo.name": "asgd", "run.steps": 100,
                "algo.momentum": '"auto"' if auto else 0.5, "algo.momentum_target": 0.8}
        cfg, ctx, topo, args = setup_on(COMM, os.path.join(base, f"f{auto}"), sets)
        algo, shard = ctx["algo"], ctx["data"].train
        mus = []
        for g in order:
            if COMM.rank == algo.leaders[g] if not algo.is_server else False:
                algo.step(shard)
            if algo.is_server:
                before = algo.version
                while algo.version == before:
                    algo.step(shard)
                mus.append(algo.mu_now)
            COMM.Barrier()
        algo.finish()
        st = algo.summary()
        want = np.bincount(taus).tolist()
        ok = st["staleness_hist"] == want and st["p_tau0"] == want[0] / len(taus)
        ok &= abs(st["staleness_mean"] - np.mean(taus)) < 1e-15
        ok &= abs(st["implicit_momentum"] - (1 - want[0] / len(taus))) < 1e-15
        ok &= st["server_updates"] == len(order)
        if algo.is_server:
            # the momentum of update k comes from the τ of updates 0..k (its own included)
            exp = [auto_momentum(0.8, taus[:k + 1].count(0) / (k + 1)) if auto else 0.5
                   for k in range(len(order))]
            ok &= np.allclose(mus, exp, rtol=0, atol=1e-15)
        assert_all(ok, f"auto={auto}: {st['staleness_hist']} vs {want}")
    assert auto_momentum(0.9, 0.05) == pytest.approx(-0.05)
    assert auto_momentum(0.9, 1.0) == 0.9 and auto_momentum(-0.9, 0.0) == -0.9
    assert auto_momentum(0.5, None) == 0.5


@pytest.mark.parallel(nprocs=4)
def test_nothing_lost_with_a_slow_group_and_a_checkpoint():
    base = shared_dir()
    steps = 120
    summ, ctx = run_on(COMM, os.path.join(base, "slow"), {
        "algo.name": "asgd", "run.steps": steps, "algo.momentum": 0.5, "run.dtype": '"float32"',
        "comm.emulate.slow_ranks": "[1]", "comm.emulate.slowdown": 10.0,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.001,
        "checkpoint.every": 17})
    algo = ctx["algo"]
    if COMM.rank == 0:
        s = summ
        pushes, got = s["ps_pushes_sent_by_rank"], s["ps_pushes_received_from_rank"]
        ok = pushes == got and sum(pushes) == steps == s["server_updates"]
        ok &= s["ps_replies_received_by_rank"] == pushes and s["ps_replies_sent"] == steps
        ok &= sum(s["worker_steps_by_rank"][1:]) == steps and sum(s["staleness_hist"]) == steps
        with open(os.path.join(base, "slow", "metrics.jsonl")) as fh:
            recs = [json.loads(ln) for ln in fh]
        ck = [r for r in recs if r["kind"] == "checkpoint"]
        ok &= len(ck) >= 1 and all("p_tau0" in r for r in recs if r["kind"] == "train")
        msg = f"{s}"
    else:
        ok, msg = True, ""
    assert_all(ok, msg)
    assert_all(algo.consensus is not None and np.isfinite(algo.consensus).all(), "consensus")


@pytest.mark.parallel(nprocs=5)
def test_groups_of_two_quiesce_and_checkpoint_without_losing_a_step():
    """Groups of 2 ranks: members learn of each quiescent point at their own
    moment (the leader's command keeps the group's collectives matched);
    frequent checkpoints, one slow group; every group step is a server update."""
    base = shared_dir()
    steps = 80
    summ, ctx = run_on(COMM, os.path.join(base, "g2"), {
        "algo.name": "asgd", "algo.groups": 2, "run.steps": steps, "run.dtype": '"float32"',
        "comm.emulate.slow_ranks": "[3]", "comm.emulate.slowdown": 4.0,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.002,
        "checkpoint.every": 5})
    algo = ctx["algo"]
    # both ranks of a group took the same steps, and together the groups took run.steps
    own = COMM.allgather(algo.step_count)
    ok = own[1] == own[2] and own[3] == own[4] and own[1] + own[3] == steps == own[0]
    if COMM.rank == 0:
        s = summ
        ok &= s["ps_pushes_sent_by_rank"] == s["ps_pushes_received_from_rank"] == \
            [0, own[1], 0, own[3], 0]
        with open(os.path.join(base, "g2", "metrics.jsonl")) as fh:
            recs = [json.loads(ln) for ln in fh]
        ok &= sum(r["kind"] == "checkpoint" for r in recs) >= 1
        ok &= [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, steps + 1))
    assert_all(ok, f"steps {own}")
