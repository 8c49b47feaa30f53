"""Dense synchronous `sgd` under MPI, P = 1..5 in one launch.

- parameters stay bit-identical on every rank;
- the update on P ranks equals the update one process computes on the union
  of the P ranks' batches (float64, 1e-12), with momentum and weight decay
  so a wrong weight (sum instead of mean, a dropped rank) cannot hide;
- the Channel books exactly the documented allreduce figures for the
  training steps;
- evaluation traffic lands under `eval`, not `train`;
- run() end to end on 3 ranks writes summary.json and metrics.jsonl.

Each launch is one scenario (see tests/helpers/mpi_scenario.py) that returns
raw observations; each claim is a serial test on them.
"""
import hashlib
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.catalog import config_from_dict
from mpidsgd.comm import costmodel
from mpidsgd.evaluate import evaluate
from mpidsgd.topology import Topology
from mpidsgd.train import build, run

from mpi_scenario import run_scenario
from mpiutil import sub_comms

STEPS = 12
SMALL = {
    "run": {"seed": 3, "steps": STEPS, "dtype": "float64", "eval_every": 0},
    "data": {"name": "synthetic", "n_samples": 600, "n_test": 64, "n_features": 12,
             "n_classes": 4, "batch_size": 7},
    "model": {"name": "mlp", "hidden": [9]},
    "algo": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 0.01},
}


class Recorder:
    """Wraps a Shard and keeps a copy of every batch it hands out."""

    def __init__(self, shard):
        self.shard, self.batches = shard, []

    def next_batch(self):
        X, y, idx = self.shard.next_batch()
        self.batches.append((np.array(X), np.array(y)))
        return X, y, idx

    def __getattr__(self, name):
        return getattr(self.shard, name)


def reference_run(model, p0, union_batches, lr, mu, wd):
    """Heavy-ball SGD with L2-style weight decay, written out plainly."""
    p, v = p0.copy(), np.zeros_like(p0)
    g = np.empty_like(p0)
    for X, y in union_batches:
        model.loss_grad(p, X, y, g)
        d = g + wd * p
        v = mu * v + d
        p = p - lr * v
    return p


def observe_sgd_P_1_to_5(tmp):
    """Scenario: 12 steps of sgd for P = 1..5, then one evaluation; per P the
    per-rank parameter hashes, errors against the union-batch reference and
    the booked figures (gathered from every rank)."""
    world, seen = MPI.COMM_WORLD, {}
    for P, comm in sub_comms(range(1, 6)):
        if comm == MPI.COMM_NULL:
            continue
        cfg = config_from_dict(SMALL)
        topo = Topology(comm)
        ctx = build(cfg, topo)
        algo, channel, model = ctx["algo"], ctx["channel"], ctx["model"]
        p0 = np.array(algo.params)
        rec = Recorder(ctx["data"].train)
        with channel.phase("train"):
            while not algo.done():
                algo.step(rec)
        # one process on the union of all ranks' batches
        batches = comm.allgather(rec.batches)
        union = [(np.concatenate([batches[r][t][0] for r in range(P)]),
                  np.concatenate([batches[r][t][1] for r in range(P)])) for t in range(STEPS)]
        ref = reference_run(model, p0, union, 0.2, 0.9, 0.01)
        err = float(np.max(np.abs(algo.params - ref)) / np.max(np.abs(ref)))
        train = (channel.counters.bytes.get("train", 0.0), channel.counters.messages.get("train", 0))
        # evaluation afterwards: what it adds under train and under eval
        before = dict(channel.counters.bytes)
        data = ctx["data"]
        evaluate(model, algo.params, data.test_X, data.test_y, channel=channel, task=data.task)
        after = channel.counters.bytes
        n = model.layout.size
        seen[str(P)] = {
            "n": n, "booking": list(costmodel.allreduce_booking(n * 8, P)),
            "param_hashes": comm.allgather(hashlib.sha256(algo.params.tobytes()).hexdigest()),
            "union_batch_sizes": sorted({b[0].shape[0] for b in union}),
            "rel_err": comm.allgather(err),
            "moved": float(np.max(np.abs(ref - p0))),
            "train_bytes": comm.allgather(train[0]), "train_messages": comm.allgather(train[1]),
            "eval_train_delta": comm.allgather(after.get("train", 0.0) - before.get("train", 0.0)),
            "eval_bytes_added": comm.allgather(after.get("eval", 0.0) - before.get("eval", 0.0)),
        }
        topo.free()
    world.Barrier()
    return seen


@pytest.fixture(scope="module")
def sgd_runs(tmp_path_factory):
    return run_scenario(__file__, "observe_sgd_P_1_to_5", 5, tmp_path_factory)


PS = [str(P) for P in range(1, 6)]


@pytest.mark.parametrize("P", PS)
def test_parameters_are_bit_identical_on_every_rank(sgd_runs, P):
    hashes = sgd_runs[P]["param_hashes"]
    assert len(hashes) == int(P) and len(set(hashes)) == 1, f"P={P}: parameters differ"


@pytest.mark.parametrize("P", PS)
def test_update_equals_one_process_on_the_union_of_batches(sgd_runs, P):
    o = sgd_runs[P]
    assert o["union_batch_sizes"] == [7 * int(P)]
    assert max(o["rel_err"]) < 1e-12, f"P={P}: relative errors {o['rel_err']}"
    # the run really moved the parameters (a no-op update would pass the above)
    assert o["moved"] > 1e-3


@pytest.mark.parametrize("P", PS)
def test_training_books_one_allreduce_per_step(sgd_runs, P):
    o = sgd_runs[P]
    b, m = o["booking"]
    assert o["train_bytes"] == [pytest.approx(STEPS * b, rel=1e-12, abs=0)] * int(P)
    assert o["train_messages"] == [STEPS * m] * int(P)


@pytest.mark.parametrize("P", PS[1:])
def test_allreduce_booking_is_the_ring_and_tree_figures(sgd_runs, P):
    o, p = sgd_runs[P], int(P)
    b, m = o["booking"]
    assert b == 2 * (p - 1) / p * o["n"] * 8 and m == 2 * int(np.ceil(np.log2(p)))


@pytest.mark.parametrize("P", PS)
def test_evaluation_traffic_is_booked_under_eval_not_train(sgd_runs, P):
    o = sgd_runs[P]
    assert o["eval_train_delta"] == [0.0] * int(P)
    if int(P) > 1:
        assert min(o["eval_bytes_added"]) > 0


def observe_full_run(tmp):
    """Scenario: run() end to end on 3 ranks; rank 0 reads back summary.json
    and metrics.jsonl."""
    comm = MPI.COMM_WORLD
    out = os.path.join(tmp, "run")
    tables = {**SMALL, "run": {**SMALL["run"], "out_dir": out, "eval_every": 4,
                               "progress": False}}
    cfg = config_from_dict(tables)
    topo = Topology(comm)
    ctx = build(cfg, topo)
    run(cfg, ctx, topo, SimpleNamespace(resume=None))
    topo.free()
    if comm.rank != 0:
        return None
    n = ctx["model"].layout.size
    with open(os.path.join(out, "summary.json")) as fh:
        summary = json.load(fh)
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        lines = [json.loads(x) for x in fh]
    return {"booking": list(costmodel.allreduce_booking(n * 8, 3)), "summary": summary,
            "metrics": lines}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return run_scenario(__file__, "observe_full_run", 3, tmp_path_factory)


def test_summary_names_the_run(full_run):
    s = full_run["summary"]
    assert s["algorithm"] == "sgd" and s["world_size"] == 3 and s["steps"] == STEPS
    assert s["samples_processed"] == STEPS * 7 * 3


def test_summary_traffic_is_the_allreduce_booking(full_run):
    s, (b, m) = full_run["summary"], full_run["booking"]
    assert s["bytes_sent_per_rank"] == pytest.approx(STEPS * b, rel=1e-12)
    assert s["messages_per_rank"] == STEPS * m
    assert s["bytes_by_phase"]["eval"] > 0


def test_summary_final_figures_are_valid(full_run):
    s = full_run["summary"]
    assert 0.0 <= s["final_test_accuracy"] <= 1.0
    assert np.isfinite(s["final_train_loss"])


def test_metrics_log_every_eval_and_ends_with_final(full_run):
    lines = full_run["metrics"]
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [4, 8, 12]
    assert lines[-1]["kind"] == "final"
