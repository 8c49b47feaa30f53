"""PyTorch models (model.name = "torch") on the parameter-server algorithms
`asgd` and `easgd`, in-process on sub-communicators:

- asgd with groups = 1 (server + 3 workers, synchronous by construction) and
  easgd with one worker (server + 1 worker, period 2): a torch MLP started
  from the built-in mlp's initial values follows the built-in run to 1e-10 in
  float64, the server's parameters (asgd's w, easgd's centre) and the
  worker's alike;
- easgd with a BatchNorm torch model and one worker: a resume from a
  mid-run (quiescent) checkpoint ends bit-identical to the uninterrupted run,
  centre, worker, optimizer and BatchNorm statistics included;
- easgd with two workers: the final test metrics are those of the centre
  (not of a worker's x_i), the pushes balance and nothing sent is lost, also
  across a checkpoint resume.

Skipped without torch, unless MPIDSGD_REQUIRE_TORCH is set (CI).
"""
import glob
import json
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

if os.environ.get("MPIDSGD_REQUIRE_TORCH"):
    import torch  # noqa: F401
else:
    torch = pytest.importorskip("torch")

from mpidsgd import train  # noqa: E402
from mpidsgd.checkpoint.format import flatten  # noqa: E402
from mpidsgd.topology import Topology  # noqa: E402
from mpiutil import assert_all, sub_comms  # noqa: E402

# the folder of torch_factories.py, the model.path of these tests
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
COMM = MPI.COMM_WORLD
# torch_factories' twin uses seed 3 and hidden (9,); 12 features, 4 classes
BASE = {"run.steps": 20, "run.eval_every": 0, "run.log_every": 1, "run.progress": "false",
        "run.seed": 3, "run.dtype": '"float64"', "data.n_samples": 480, "data.n_test": 64,
        "data.n_features": 12, "data.n_classes": 4, "data.batch_size": 8,
        "algo.lr": 0.05, "algo.momentum": 0.9, "algo.schedule": '"constant"'}
BUILTIN = {"model.name": '"mlp"', "model.hidden": "[9]"}


def torch_model(factory):
    return {"model.name": '"torch"', "model.factory": f'"torch_factories:{factory}"',
            "model.path": json.dumps(HERE)}


def shared_dir(comm):
    return comm.bcast(tempfile.mkdtemp(prefix="mpidsgd-torch-ps-") if comm.rank == 0 else None)


def run_on(comm, out, sets, resume=None):
    """One train.setup + train.run on `comm`; (summary, ctx)."""
    items = {**BASE, "run.out_dir": json.dumps(out), **sets}
    argv = [x for k, v in items.items() for x in ("--set", f"{k}={v}")]
    args = train.parse_args(argv + (["--resume", resume] if resume else []))
    topo = Topology(comm)
    cfg, ctx = train.setup(args, topo)
    return train.run(cfg, ctx, topo, args), ctx


def twin_distance(comm, base, algo):
    """Built-in mlp and its torch twin under `algo`: worst distance of the
    server's and of this rank's parameters, and how far the run moved."""
    from torch_factories import to_torch_order
    perm = to_torch_order((12,), 4)
    _, ref = run_on(comm, os.path.join(base, "builtin"), {**BUILTIN, **algo})
    _, tor = run_on(comm, os.path.join(base, "torch"), {**torch_model("builtin_twin"), **algo})
    a, b = ref["algo"], tor["algo"]
    server = float(np.abs(b.consensus_params() - a.consensus_params()[perm]).max())
    own = float(np.abs(b.params - a.params[perm]).max())
    moved = float(np.abs(b.consensus_params() - b.model._home).max())
    return server, own, moved


@pytest.mark.parallel(nprocs=4)
def test_asgd_one_group_and_easgd_one_worker_follow_the_builtin_mlp():
    base = shared_dir(COMM)
    server, own, moved = twin_distance(COMM, os.path.join(base, "asgd"),
                                       {"algo.name": '"asgd"', "algo.groups": 1})
    assert_all(server <= 1e-10 and own <= 1e-10 and moved > 1e-2,
               f"asgd groups=1: server {server:.3g}, own {own:.3g}, moved {moved:.3g}")
    # easgd with one worker is deterministic: read, e = α(x − x̃), push, in turn
    for _, sub in sub_comms([2]):
        if sub != MPI.COMM_NULL:
            server, own, moved = twin_distance(
                sub, os.path.join(shared_dir(sub), "easgd"),
                {"algo.name": '"easgd"', "algo.H": 2, "algo.elastic_beta": 0.7})
            assert_all(server <= 1e-10 and own <= 1e-10 and moved > 1e-2,
                       f"easgd 1 worker: centre {server:.3g}, own {own:.3g}, moved {moved:.3g}",
                       comm=sub)


def final_state(ctx):
    """Everything a resume must restore, as bytes by name (this rank)."""
    st = ctx["algo"].state_dict()
    flat = {f"{part}/{k}": np.array(v) for part in ("shared", "local")
            for k, v in flatten(st[part]).items()}          # nested sections by path
    flat.update({f"model/{k}": np.array(v) for k, v in ctx["model"].state_dict().items()})
    return flat


def first_checkpoint(out):
    names = sorted(glob.glob(os.path.join(out, "checkpoints", "ckpt-*.h5")),
                   key=lambda p: int(p.rsplit("-", 1)[1][:-3]))
    return names[0] if names else None


@pytest.mark.parallel(nprocs=2)
def test_easgd_batchnorm_resume_with_one_worker_is_bit_identical():
    base = shared_dir(COMM)
    sets = {**torch_model("bn_mlp"), "algo.name": '"easgd"', "algo.H": 3, "run.steps": 24}
    # checkpoint.every counts server updates: one push per H = 3 local steps, 8 in all;
    # the resumed run checkpoints alike (a quiescent point exchanges messages too)
    sets.update({"checkpoint.every": 3, "checkpoint.keep_last": 0})
    _, ca = run_on(COMM, f"{base}/A", sets)
    a = final_state(ca)
    ck = COMM.bcast(first_checkpoint(f"{base}/A") if COMM.rank == 0 else None)
    assert_all(ck is not None and not ck.endswith("-8.h5"), f"mid-run checkpoint: {ck}")
    _, cb = run_on(COMM, f"{base}/B", sets, resume=ck)
    b = final_state(cb)
    diff = sorted(k for k in a if k not in b or a[k].tobytes() != b[k].tobytes())
    ok = not diff and set(a) == set(b)
    # the worker trained its BatchNorm statistics; the server computes no gradient
    bufs = COMM.allgather(a["model/buffers"].tobytes() if "model/buffers" in a else None)
    ok &= bufs[0] is not None and bufs[0] != bufs[1]
    moved = float(np.abs(ca["algo"].consensus_params() - ca["model"]._home).max())
    assert_all(ok and moved > 1e-3, f"resume from {ck} differs in {diff} (moved {moved:.3g})")


def gathered_test_set(ctx, comm):
    """The whole test set on every rank (each rank holds a disjoint slice)."""
    d = ctx["data"]
    X = np.concatenate(comm.allgather(np.asarray(d.test_X)))
    y = np.concatenate(comm.allgather(np.asarray(d.test_y)))
    return X, y


def balanced(s, workers_steps, H):
    """Pushes sent = received = one per H local steps; nothing lost."""
    pushes = s["ps_pushes_sent_by_rank"]
    want = [0] + [-(-n // H) for n in workers_steps]
    ok = pushes == s["ps_pushes_received_from_rank"] == want
    ok &= s["server_updates"] == sum(want)
    ok &= s["elastic_centre_change_max"] > 1e-3
    ok &= s["elastic_sent_sum_minus_centre_change"] <= 1e-12 * s["elastic_centre_change_max"]
    return ok


@pytest.mark.parallel(nprocs=3)
def test_easgd_evaluates_the_centre_and_resumes_with_two_workers():
    base = shared_dir(COMM)
    sets = {**torch_model("builtin_twin"), "algo.name": '"easgd"', "algo.H": 4,
            "run.steps": 30, "checkpoint.every": 6, "checkpoint.keep_last": 0}
    summ, ctx = run_on(COMM, f"{base}/A", sets)
    algo, model = ctx["algo"], ctx["model"]
    X, y = gathered_test_set(ctx, COMM)
    centre = COMM.bcast(np.array(algo.params) if algo.is_server else None)
    # the model has no state: the centre scored on the whole test set anywhere
    # is what the run reported; a worker's own x_i scores differently
    want = model.loss(centre, X, y)
    mine = model.loss(algo.params, X, y)
    got = COMM.bcast(summ["final_test_loss"] if COMM.rank == 0 else None)
    acc = COMM.bcast(summ["final_test_accuracy"] if COMM.rank == 0 else None)
    ok = abs(got - want) <= 1e-12 * max(1.0, abs(want))
    ok &= acc == float(np.mean(model.predict(centre, X) == y))
    ok &= np.array_equal(algo.consensus_params(), centre)
    ok &= algo.is_server or abs(mine - want) > 1e-9
    steps = COMM.allgather(algo.step_count)[1:]
    if COMM.rank == 0:
        ok &= steps == [30, 30] and balanced(summ, steps, 4)
    assert_all(ok, f"test loss {got} vs centre {want} (own {mine}); steps {steps}")

    # resume from the first (quiescent, mid-run) checkpoint: steps continue,
    # and the books over the whole run still balance
    ck = COMM.bcast(first_checkpoint(f"{base}/A") if COMM.rank == 0 else None)
    summ, ctx = run_on(COMM, f"{base}/B", sets, resume=ck)
    algo = ctx["algo"]
    steps = COMM.allgather(algo.step_count)[1:]
    ok = np.isfinite(algo.consensus_params()).all()
    if COMM.rank == 0:
        ok &= ck is not None and steps == [30, 30] and balanced(summ, steps, 4)
        ok &= 0.0 <= summ["final_test_accuracy"] <= 1.0
    assert_all(ok, f"resume from {ck}: steps {steps}, {summ if COMM.rank == 0 else ''}")
