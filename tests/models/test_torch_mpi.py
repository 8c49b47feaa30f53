"""PyTorch models (model.name = "torch") under MPI, in-process on sub-
communicators:

- sgd at P = 4 and deterministic gosgd at P = 2: a torch MLP started from the
  built-in mlp's initial values follows the built-in trajectory to 1e-10
  (float64); free-running gosgd trains a torch model to the built-in's level;
- every synchronous algorithm (except the VR family, which refuses torch
  models) keeps the parameters of a BatchNorm model bit-identical across
  ranks; periodic averaging also leaves the averaged BatchNorm statistics
  identical, while dense sgd keeps them rank-local;
- checkpoint resume of a BatchNorm model (sgd, P = 2) is bit-identical,
  BatchNorm statistics of every rank included;
- bad input: one line naming the key, exit 2 on every rank.

Skipped without torch, unless MPIDSGD_REQUIRE_TORCH is set (CI).
"""
import json
import os
import sys
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

from mpidsgd.catalog import config_from_dict  # noqa: E402
from mpidsgd.algorithms import REGISTRY  # noqa: E402
from mpidsgd.algorithms.vrbase import VRBase  # noqa: E402
from mpidsgd.topology import Topology  # noqa: E402
from mpiutil import assert_all, sub_comms  # noqa: E402

# the folder of torch_factories.py, the model.path of these tests
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
COMM = MPI.COMM_WORLD


def job(model, algo, steps=50):
    return config_from_dict({
        "run": {"seed": 3, "steps": steps, "dtype": "float64", "eval_every": 0},
        "data": {"name": "synthetic", "n_samples": 600, "n_test": 64, "n_features": 12,
                 "n_classes": 4, "batch_size": 7},
        "model": {**model, "l2": 1e-3},
        "algo": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, **algo}})


def torch_model(factory):
    return {"name": "torch", "factory": f"torch_factories:{factory}", "path": HERE}


def identical(comm, arr, what):
    everyone = comm.allgather(np.asarray(arr).tobytes())
    assert_all(all(b == everyone[0] for b in everyone), f"{what}: differs between ranks", comm=comm)


def follow(comm, algo, steps):
    """Torch twin and built-in mlp side by side; worst distance over the run."""
    from torch_factories import HIDDEN, to_torch_order
    topo = Topology(comm)
    ref = train.build(job({"name": "mlp", "hidden": list(HIDDEN)}, algo, steps), topo)
    tor = train.build(job(torch_model("builtin_twin"), algo, steps), topo)
    perm = to_torch_order((12,), 4)
    a, b = ref["algo"], tor["algo"]
    worst = 0.0
    for _ in range(steps):
        a.step(ref["data"].train)
        b.step(tor["data"].train)
        worst = max(worst, float(np.abs(b.params - a.params[perm]).max()))
    a.finish(), b.finish()
    worst = max(worst, float(np.abs(b.params - a.params[perm]).max()))
    moved = float(np.abs(b.params - b.model._home).max())
    return worst, moved, b


@pytest.mark.parallel(nprocs=4)
def test_sgd_P4_follows_the_builtin_mlp_and_every_sync_algorithm_stays_identical():
    worst, moved, b = follow(COMM, {"name": "sgd"}, 50)
    assert_all(worst <= 1e-10 and moved > 1e-2, f"sgd P=4: worst {worst:.3g}, moved {moved:.3g}")
    identical(COMM, b.params, "sgd P=4 torch twin parameters")

    topo = Topology(COMM)
    for name, cls in sorted(REGISTRY.items()):
        if not cls.synchronous or issubclass(cls, VRBase):
            continue
        algo = {"name": name, **({"H": 4} if "H" in cls.Options.__dataclass_fields__ else {})}
        ctx = train.build(job(torch_model("bn_mlp"), algo, steps=16), topo)
        a = ctx["algo"]
        while not a.done():
            a.step(ctx["data"].train)
        a.finish()
        assert_all(np.isfinite(a.params).all(), f"{name}: non-finite parameters")
        identical(COMM, a.params, f"{name} parameters")
        state = comm_gather_state(ctx["model"].state)
        if name in ("localsgd", "diloco", "palsgd"):
            identical(COMM, ctx["model"].state, f"{name} BatchNorm statistics (averaged at syncs)")
        elif name == "sgd":
            assert_all(len(set(state)) == COMM.size, "sgd: BatchNorm statistics are rank-local")


def comm_gather_state(state):
    return COMM.allgather(state.tobytes())


@pytest.mark.parallel(nprocs=2)
def test_gosgd_with_torch_models():
    # deterministic push-sum: the same mixing on the same numbers
    worst, moved, _ = follow(COMM, {"name": "gosgd", "deterministic": True, "p": 0.5}, 40)
    assert_all(worst <= 1e-10 and moved > 1e-2, f"gosgd: worst {worst:.3g}, moved {moved:.3g}")
    # free-running: trains through the normal loop as well as the built-in model
    out = COMM.bcast(tempfile.mkdtemp(prefix="mpidsgd-torch-") if COMM.rank == 0 else None)
    acc = {}
    for label, sets in (("builtin", ["model.hidden=[16]"]),
                        ("torch", ['model.name="torch"', 'model.factory="torch_factories:bn_mlp"',
                                   f'model.path="{HERE}"'])):
        args = train.parse_args(
            [x for s in sets + ['algo.name="gosgd"', "run.epochs=3", "data.n_samples=2048",
                               "data.n_features=12", "data.n_classes=4", "run.progress=false",
                               f'run.out_dir="{out}/{label}"', "algo.lr=0.05"]
             for x in ("--set", s)])
        topo = Topology(COMM)
        cfg, ctx = train.setup(args, topo)
        summary = train.run(cfg, ctx, topo, args)
        acc[label] = COMM.bcast(summary["final_test_accuracy"] if COMM.rank == 0 else None)
    assert_all(acc["torch"] >= acc["builtin"] - 0.05 and acc["torch"] > 0.6, f"accuracy {acc}")


def run_once(out, sets, resume=None):
    items = {"run.steps": 20, "run.eval_every": 5, "run.log_every": 1, "run.progress": "false",
             "run.seed": 3, "data.n_samples": 256, "data.n_test": 64, "data.n_features": 8,
             "data.n_classes": 3, "data.batch_size": 16, "model.name": '"torch"',
             "model.factory": '"torch_factories:bn_mlp"', "model.path": json.dumps(HERE),
             "algo.name": '"sgd"', "algo.lr": 0.05, "algo.momentum": 0.9,
             "run.out_dir": json.dumps(out), **sets}
    argv = [x for k, v in items.items() for x in ("--set", f"{k}={v}")]
    args = train.parse_args(argv + (["--resume", resume] if resume else []))
    topo = Topology(COMM)
    cfg, ctx = train.setup(args, topo)
    train.run(cfg, ctx, topo, args)
    st = ctx["algo"].state_dict()
    flat = {f"{part}/{k}": np.array(v) for part in ("shared", "local")
            for k, v in flatten(st[part]).items()}          # nested sections by path
    flat.update({f"model/{k}": np.array(v) for k, v in ctx["model"].state_dict().items()})
    return flat


@pytest.mark.parallel(nprocs=2)
def test_checkpoint_resume_of_a_batchnorm_model_is_bit_identical():
    base = COMM.bcast(tempfile.mkdtemp(prefix="mpidsgd-torch-ck-") if COMM.rank == 0 else None)
    a = run_once(f"{base}/A", {"checkpoint.every": 10, "checkpoint.keep_last": 0})
    b = run_once(f"{base}/B", {}, resume=f"{base}/A/checkpoints/ckpt-10.h5")
    diff = sorted(k for k in a if a[k].tobytes() != b[k].tobytes() or a[k].shape != b[k].shape)
    assert_all(not diff and set(a) == set(b) and "model/buffers" in a, f"resume differs in {diff}")
    # the statistics are per rank: a checkpoint keeping only one rank's would fail above
    assert_all(len(set(COMM.allgather(a["model/buffers"].tobytes()))) == 2, "BatchNorm stats equal")


BAD = [
    ({"model.factory": '"torch_factories:nope"'}, "model.factory 'torch_factories:nope' cannot be imported"),
    ({"model.factory": '"no_such_module:f"'}, "model.factory 'no_such_module:f' cannot be imported"),
    ({"model.factory": '"torch_factories:raises"'}, "raised RuntimeError: factory failed on purpose"),
    ({"model.factory": '"torch_factories:no_params"'}, "'torch_factories:no_params' built a module with no parameters"),
    # the task follows the model (loss mse: regression); an explicit task it contradicts is refused
    ({"model.loss": '"mse"', "data.task": '"classification"'},
     "data.task = classification needs a classifier"),
    ({"data.task": '"regression"'}, "data.task = regression needs a regression model"),
    ({"model.factory": '"bn_mlp"'}, "model.factory must look like 'package.module:callable'"),
    ({"model.loss": '"hinge"'}, "model.loss must be cross_entropy or mse"),
    ({"model.backward": '"fast"'}, "model.backward must be auto | autograd, got 'fast'"),
    ({"algo.name": '"svrg"'}, "algo.name = 'svrg' needs per-sample derivatives"),
    ({"algo.name": '"saga"'}, "algo.name = 'saga' needs per-sample derivatives"),
    ({"algo.name": '"centralvr"'}, "algo.name = 'centralvr' needs per-sample derivatives"),
    ({"hide_torch": True}, "needs PyTorch, which is not installed: pip install 'mpidsgd[torch]'"),
]


@pytest.mark.parallel(nprocs=2)
def test_bad_torch_input_one_line_exit_2_on_every_rank(capsys, monkeypatch):
    failed = []
    for sets, words in BAD:
        sets = dict(sets)
        with monkeypatch.context() as mp:
            if sets.pop("hide_torch", False):
                mp.setitem(sys.modules, "torch", None)      # as if torch were not installed
            items = {"data.n_samples": 256, "data.n_test": 32, "data.n_features": 8,
                     "run.steps": 2, "run.eval_every": 0, "model.name": '"torch"',
                     "model.path": json.dumps(HERE), "model.factory": '"torch_factories:bn_mlp"',
                     "run.out_dir": json.dumps(tempfile.gettempdir() + "/mpidsgd-torch-bad"), **sets}
            args = train.parse_args([x for k, v in items.items() for x in ("--set", f"{k}={v}")])
            code = None
            try:
                train.setup(args, Topology(COMM))
            except SystemExit as exc:
                code = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        ok = code == 2 and (len(err) == 1 and err[0].startswith("mpidsgd: error: ")
                            and words in err[0] if COMM.rank == 0 else not err)
        if not all(COMM.allgather(ok)):
            failed.append(f"{sets}: code {code}, {err}")
    assert_all(not failed, "\n".join(failed))
