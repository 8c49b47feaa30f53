"""gosgd runs for the MPI tests: instances on a sub-communicator with a
DIFFERENT start x_i on every rank (with equal starts any merge weight would
pass) and lr = 0 unless asked, batches that depend only on (rank, batch
number), and the push-sum conservation figures of a finished run."""
from types import SimpleNamespace

import numpy as np
from mpi4py import MPI

from mpidsgd.algorithms import REGISTRY
from mpidsgd.backend import Backend
from mpidsgd.catalog import config_from_dict
from mpidsgd.comm.channel import Channel
from mpidsgd.models import build_model

WORLD = MPI.COMM_WORLD
D, K, B = 6, 3, 4          # features, classes, batch: softmax has (D+1)*K params


class FakeShard:
    """Batches that depend only on (rank, batch number)."""

    steps_per_epoch = 1000

    def __init__(self, rank):
        self.rank, self.k = rank, 0

    def next_batch(self):
        rng = np.random.default_rng([7, self.rank, self.k])
        self.k += 1
        return rng.normal(size=(B, D)), rng.integers(0, K, B), np.arange(B)


def start(rank, n):
    return np.random.default_rng([99, rank]).normal(size=n) * (1 + rank)


def make(sub, *, steps=10, seed=0, dtype="float64", **algo):
    """A gosgd instance on `sub`, rank-specific start x_i (float64 unless asked)."""
    table = {"run": {"steps": steps, "seed": seed, "dtype": dtype},
             "algo": {"name": "gosgd", "lr": 0.0, **algo}}
    cfg = config_from_dict(table)
    topo = SimpleNamespace(rank=sub.rank, size=sub.size, world=sub)   # cheap per run
    backend = Backend("cpu")
    ch = Channel(sub, backend=backend)
    model = build_model("softmax", input_shape=(D,), n_outputs=K, dtype=dtype)
    params = start(topo.rank, model.layout.size).astype(dtype)
    algo = REGISTRY["gosgd"](cfg, topo, backend, model, params, ch)
    shard = FakeShard(topo.rank)
    algo.plan(shard)
    return algo, shard, model


def run_to_end(algo, shard):
    while not algo.done():
        algo.step(shard)
    algo.finish()


def conservation(algo, x0, sub):
    """Figures behind push-sum conservation (collective): Σα, the largest
    |Σα_i x_i - Σ x_i^0 / P| and max |Σ x_i^0 / P|, every rank's largest
    |consensus - mean start|, the sent_to / recv_from matrices and the
    pushes and merges summed over ranks."""
    P = sub.size
    tot_a = sub.allreduce(algo.alpha)
    wx = np.zeros_like(x0)
    sub.Allreduce(algo.alpha * algo.params, wx)
    mean0 = np.zeros_like(x0)
    sub.Allreduce(x0 / P, mean0)
    c = {"sum_alpha": float(tot_a), "dev": float(np.max(np.abs(wx - mean0))),
         "scale": float(np.max(np.abs(mean0))),
         "cons_dev": sub.allgather(float(np.max(np.abs(algo.consensus_params() - mean0)))),
         "boxed": algo.box is not None}
    if algo.box is not None:
        c["S"] = np.array(sub.allgather(algo.box.sent_to)).tolist()
        c["R"] = np.array(sub.allgather(algo.box.recv_from)).tolist()
        c["pushes"] = int(sub.allreduce(algo.pushes))
        c["merged"] = int(sub.allreduce(algo.merged))
    return c


def conserved(c):
    """Why conservation figures c fail, or '' if Σα = 1, Σα_i x_i = Σ x_i^0 / P,
    consensus = mean start, and every push was received exactly once
    (sent_to = recv_from transposed, nothing sent to oneself)."""
    why = []
    if not abs(c["sum_alpha"] - 1.0) <= 1e-12:
        why.append(f"sum alpha {c['sum_alpha']!r}")
    if not c["dev"] <= 1e-10 * max(1.0, c["scale"]):
        why.append(f"max dev {c['dev']}")
    if not max(c["cons_dev"]) <= 1e-10:
        why.append(f"consensus off by {c['cons_dev']}")
    if c["boxed"]:
        S, R = np.array(c["S"]), np.array(c["R"])
        if not (np.array_equal(S, R.T) and np.all(np.diag(S) == 0)):
            why.append("sent_to != recv_from transposed")
        if not S.sum() == c["pushes"] == c["merged"]:
            why.append(f"pushes {S.sum()} {c['pushes']} merged {c['merged']}")
    return "; ".join(why)
