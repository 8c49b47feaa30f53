"""easgd (elastic averaging on the parameter server) under MPI, in-process:

- one worker, period 1, 20 steps: the centre and the worker equal the serial
  closed form (local momentum step, e = α(x − x̃), x −= e, x̃ += e) to 1e-12;
- three workers, one 10x slower, a quiescent checkpoint mid-run: the sum of
  every e the workers sent equals the centre's change (nothing lost), and
  every push was counted once by the server.

Both runs happen in one 4-rank launch (a scenario, see
tests/helpers/mpi_scenario.py; the one-worker run on 2 of the ranks) that
records raw per-rank figures; each claim is a serial test on them.
"""
import json
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.data import Shard
from mpidsgd.optim import build_optimizer
from mpi_scenario import run_scenario
from mpiutil import sub_comms
from ps_runs import run_on

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


def observe_one_worker(sub, base):
    """One server and one worker, period 1, 20 steps, against closed_form."""
    _, ctx = run_on(sub, os.path.join(base, "e1"), {
        "algo.name": "easgd", "algo.H": 1, "algo.elastic_beta": 0.7, "run.steps": 20,
        "algo.nesterov": "true"})
    algo = ctx["algo"]
    cfg = algo.cfg
    xc = None if algo.is_server else closed_form(ctx, {"algo": cfg.algo, "seed": cfg.run.seed}, 20, 0.7)
    x, c = sub.bcast(xc, root=1)
    # the server holds the centre, the worker its own parameters
    own = c if algo.is_server else x
    return {"is_server": sub.allgather(bool(algo.is_server)),
            "version": sub.allgather(int(algo.version)),
            "params_diff": sub.allgather(float(np.max(np.abs(algo.params - own)))),
            "consensus_diff": sub.allgather(float(np.max(np.abs(algo.consensus_params() - c)))),
            "worker_minus_centre": float(np.max(np.abs(x - c)))}


def observe_slow_worker(base):
    """Three workers, rank 2 ten times slower, a checkpoint every 9 steps."""
    out = os.path.join(base, "e3")
    summ, _ = run_on(COMM, out, {
        "algo.name": "easgd", "algo.H": 2, "run.steps": 80,
        "comm.emulate.slow_ranks": "[2]", "comm.emulate.slowdown": 10.0,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.001,
        "checkpoint.every": 9})
    if COMM.rank != 0:
        return None
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        kinds = [json.loads(ln)["kind"] for ln in fh]
    return {"summary": summ, "kinds": kinds}


def observe_easgd(tmp):
    """Scenario on 4 ranks: the one-worker run on 2, then the slow run on 4."""
    seen = {}
    for _, sub in sub_comms([2]):
        if sub != MPI.COMM_NULL:
            seen["one"] = observe_one_worker(sub, tmp)
    seen["slow"] = observe_slow_worker(tmp)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_easgd", 4, tmp_path_factory)


def test_one_worker_server_holds_the_closed_form_centre(obs):
    o = obs["one"]
    assert o["is_server"] == [True, False]
    assert o["params_diff"][0] <= 1e-12 and o["version"][0] == 20


def test_one_worker_params_equal_the_closed_form(obs):
    o = obs["one"]
    # the worker did not collapse onto the centre (else the centre check proves little)
    assert o["params_diff"][1] <= 1e-12 and o["worker_minus_centre"] > 1e-6


def test_one_worker_consensus_is_the_centre_on_every_rank(obs):
    assert max(obs["one"]["consensus_diff"]) <= 1e-12


def test_slow_worker_every_push_is_counted_once(obs):
    s = obs["slow"]["summary"]
    assert s["ps_pushes_sent_by_rank"] == s["ps_pushes_received_from_rank"] == [0, 40, 40, 40]


def test_slow_worker_every_push_gets_one_update_and_one_reply(obs):
    s = obs["slow"]["summary"]
    assert s["server_updates"] == 120 and s["ps_replies_sent"] == 120   # one read per push


def test_slow_worker_centre_change_is_the_sum_of_what_was_sent(obs):
    s = obs["slow"]["summary"]
    assert s["elastic_centre_change_max"] > 1e-3
    assert s["elastic_sent_sum_minus_centre_change"] <= 1e-12 * s["elastic_centre_change_max"]


def test_slow_worker_run_writes_a_checkpoint(obs):
    assert "checkpoint" in obs["slow"]["kinds"]
