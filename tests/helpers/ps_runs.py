"""In-process runs of the parameter-server algorithms (asgd, easgd) for the
MPI tests: train.setup/run on a Topology of a given communicator, a tiny
problem in float64 with a constant learning rate."""
import json
import tempfile

from mpi4py import MPI

from mpidsgd import train
from mpidsgd.topology import Topology

COMM = MPI.COMM_WORLD
# a tiny problem; each run overrides it with its own sets
BASE = {"run.steps": 20, "run.eval_every": 0, "run.log_every": 1, "run.progress": "false",
        "run.seed": 5, "run.dtype": '"float64"', "data.n_samples": 384, "data.n_test": 64,
        "data.n_features": 8, "data.n_classes": 3, "data.batch_size": 16,
        "model.hidden": "[8]", "algo.lr": 0.05, "algo.momentum": 0.9,
        "algo.schedule": "\"constant\""}


def shared_dir():
    """A fresh folder made by rank 0, its path on every rank (collective)."""
    path = tempfile.mkdtemp(prefix="mpidsgd-asgd-") if COMM.rank == 0 else None
    return COMM.bcast(path, root=0)


def setup_on(comm, out, sets):
    """train.setup on `comm` with BASE + sets into `out`: (cfg, ctx, topo, args)."""
    items = {**BASE, "run.out_dir": json.dumps(out), **sets}
    args = train.parse_args([x for k, v in items.items() for x in ("--set", f"{k}={v}")])
    topo = Topology(comm)
    cfg, ctx = train.setup(args, topo)
    return cfg, ctx, topo, args


def run_on(comm, out, sets):
    """setup_on, then train.run to the end: (summary, ctx)."""
    cfg, ctx, topo, args = setup_on(comm, out, sets)
    summary = train.run(cfg, ctx, topo, args)
    return summary, ctx
