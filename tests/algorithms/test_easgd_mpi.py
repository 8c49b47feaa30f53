"""easgd (elastic averaging on the parameter server) under MPI, in-process:

- one worker, period 1, 20 steps: the centre and the worker equal the serial
  closed form (local momentum step, e = α(x − x̃), x −= e, x̃ += e) to 1e-12;
- three workers, one 10x slower, a quiescent checkpoint mid-run: the sum of
  every e the workers sent equals the centre's change (nothing lost), and
  every push was counted once by the server.
"""
import json
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.data import Shard
from mpidsgd.optim import build_optimizer
from mpiutil import assert_all, sub_comms
from ps_runs import run_on, shared_dir

COMM = MPI.COMM_WORLD


def closed_form(ctx, cfg_algo, steps, beta):
    """Serial EASGD with one worker and period 1 on the worker's batches."""
    model, sh = ctx["model"], ctx["data"].train
    shard = Shard(sh.X, sh.y, sh.ids, sh.batch_size, sh.steps_per_epoch, seed=sh.seed, rank=sh.rank)
    x = np.zeros(model.layout.size)
    model.init(x, np.random.default_rng([cfg_algo["seed"], 0x1D]))
    c = x.copy()
    opt = build_optimizer(cfg_algo["algo"], x.size, x.dtype, np)
    g = np.zeros_like(x)
    for _ in range(steps):
        X, y, _ = shard.next_batch()
        model.loss_grad(x, X, y, g)
        opt.step(x, g, cfg_algo["algo"].lr)
        e = beta * (x - c)
        x -= e
        c += e
    return x, c


@pytest.mark.parallel(nprocs=2)
def test_one_worker_period_one_equals_closed_form():
    base = shared_dir()
    _, ctx = run_on(COMM, os.path.join(base, "e1"), {
        "algo.name": "easgd", "algo.H": 1, "algo.elastic_beta": 0.7, "run.steps": 20,
        "algo.nesterov": "true"})
    algo = ctx["algo"]
    cfg = algo.cfg
    xc = None if algo.is_server else closed_form(ctx, {"algo": cfg.algo, "seed": cfg.run.seed}, 20, 0.7)
    x, c = COMM.bcast(xc, root=1)
    if algo.is_server:
        ok = np.max(np.abs(algo.params - c)) <= 1e-12 and algo.version == 20
    else:
        ok = np.max(np.abs(algo.params - x)) <= 1e-12 and np.max(np.abs(x - c)) > 1e-6
    ok &= np.max(np.abs(algo.consensus_params() - c)) <= 1e-12
    assert_all(ok, "easgd with one worker and H = 1 differs from the closed form")


@pytest.mark.parallel(nprocs=4)
def test_nothing_lost_with_a_slow_worker_and_a_checkpoint():
    base = shared_dir()
    summ, ctx = run_on(COMM, os.path.join(base, "e3"), {
        "algo.name": "easgd", "algo.H": 2, "run.steps": 80,
        "comm.emulate.slow_ranks": "[2]", "comm.emulate.slowdown": 10.0,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.001,
        "checkpoint.every": 9})
    if COMM.rank == 0:
        s = summ
        pushes = s["ps_pushes_sent_by_rank"]
        ok = pushes == s["ps_pushes_received_from_rank"] == [0, 40, 40, 40]
        ok &= s["server_updates"] == 120 and s["ps_replies_sent"] == 120   # one read per push
        ok &= s["elastic_centre_change_max"] > 1e-3
        ok &= s["elastic_sent_sum_minus_centre_change"] <= 1e-12 * s["elastic_centre_change_max"]
        with open(os.path.join(base, "e3", "metrics.jsonl")) as fh:
            ok &= any(json.loads(ln)["kind"] == "checkpoint" for ln in fh)
        msg = str(s)
    else:
        ok, msg = True, ""
    assert_all(ok, msg)
