"""Dense synchronous `sgd` under MPI, P = 1..5 in one launch.

- parameters stay bit-identical on every rank;
- the update on P ranks equals the update one process computes on the union
  of the P ranks' batches (float64, 1e-12), with momentum and weight decay
  so a wrong weight (sum instead of mean, a dropped rank) cannot hide;
- the Channel books exactly the documented allreduce figures for the
  training steps, and evaluation traffic lands under `eval`, not `train`.
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.catalog import config_from_dict
from mpidsgd.comm import costmodel
from mpidsgd.evaluate import evaluate
from mpidsgd.topology import Topology
from mpidsgd.train import build

from mpiutil import assert_all, sub_comms

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


@pytest.mark.parallel(nprocs=5)
def test_sgd_identical_params_union_batch_update_and_booking_P_1_to_5():
    world = MPI.COMM_WORLD
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
        # 1. bit-identical parameters on every rank
        everyone = comm.allgather(algo.params.tobytes())
        assert_all(all(b == everyone[0] for b in everyone),
                   f"P={P}: parameters differ between ranks", comm=comm)
        # 2. one process on the union of all ranks' batches
        batches = comm.allgather(rec.batches)
        union = [(np.concatenate([batches[r][t][0] for r in range(P)]),
                  np.concatenate([batches[r][t][1] for r in range(P)])) for t in range(STEPS)]
        sizes = {b[0].shape[0] for b in union}
        assert sizes == {7 * P}
        ref = reference_run(model, p0, union, 0.2, 0.9, 0.01)
        err = np.max(np.abs(algo.params - ref)) / np.max(np.abs(ref))
        assert_all(err < 1e-12, f"P={P}: relative error {err:.3g} vs union-batch reference",
                   comm=comm)
        # the run really moved the parameters (a no-op update would pass 1.)
        assert np.max(np.abs(ref - p0)) > 1e-3
        # 3. booking of the training steps: one allreduce of n float64 each step
        n = model.layout.size
        b, m = costmodel.allreduce_booking(n * 8, P)
        assert channel.counters.bytes.get("train", 0.0) == pytest.approx(STEPS * b, rel=1e-12, abs=0)
        assert channel.counters.messages.get("train", 0) == STEPS * m
        if P > 1:
            assert b == 2 * (P - 1) / P * n * 8 and m == 2 * int(np.ceil(np.log2(P)))
        # 4. evaluation traffic is booked under eval, never under train
        before = dict(channel.counters.bytes)
        data = ctx["data"]
        evaluate(model, algo.params, data.test_X, data.test_y, channel=channel, task=data.task)
        assert channel.counters.bytes.get("train", 0.0) == before.get("train", 0.0)
        if P > 1:
            assert channel.counters.bytes["eval"] > before.get("eval", 0.0)
        topo.free()
    world.Barrier()


@pytest.mark.parallel(nprocs=3)
def test_full_run_writes_summary_with_train_and_eval_phases(tmp_path_factory):
    """run() end to end on 3 ranks: summary.json fields and phase split."""
    import json
    import os
    from types import SimpleNamespace
    from mpidsgd.train import run
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path_factory.mktemp("run")) if comm.rank == 0 else None)
    tables = {**SMALL, "run": {**SMALL["run"], "out_dir": out, "eval_every": 4,
                               "progress": False}}
    cfg = config_from_dict(tables)
    topo = Topology(comm)
    ctx = build(cfg, topo)
    run(cfg, ctx, topo, SimpleNamespace(resume=None))
    if comm.rank == 0:
        with open(os.path.join(out, "summary.json")) as fh:
            s = json.load(fh)
        n = ctx["model"].layout.size
        b, m = costmodel.allreduce_booking(n * 8, 3)
        assert s["algorithm"] == "sgd" and s["world_size"] == 3 and s["steps"] == STEPS
        assert s["samples_processed"] == STEPS * 7 * 3
        assert s["bytes_sent_per_rank"] == pytest.approx(STEPS * b, rel=1e-12)
        assert s["messages_per_rank"] == STEPS * m
        assert s["bytes_by_phase"]["eval"] > 0
        assert 0.0 <= s["final_test_accuracy"] <= 1.0
        assert np.isfinite(s["final_train_loss"])
        lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
        assert [r["step"] for r in lines if r["kind"] == "eval"] == [4, 8, 12]
        assert lines[-1]["kind"] == "final"
    topo.free()
