"""Property: a valid checkpoint with any one dataset or attribute changed
(dtype, shape, value: NaN, negative, huge; its kind; deleted) is either
refused with a CheckpointError (one line, exit 2 in a real run) or loaded;
never another exception, a hang or a signal. The loaders run in this process
(a 1-rank run's CheckpointManager), bounded by `max_examples`."""
import json
import shutil

import h5py
import numpy as np
import pytest

from checkpoint_jobs import TINY, launch

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
DTYPES = [np.float32, np.float16, np.int32, np.int8, np.uint8, np.bool_, "S8", np.complex64]
VALUES = [np.nan, np.inf, -1, -(2 ** 62), 2 ** 62, 1e300, 0, 1.5]
ATTR_VALUES = [np.nan, -1, 2 ** 62, -(2 ** 62), np.bytes_(b"bytes"), "text", np.arange(3), 1.5,
               True, "[model]\nhidden = [3]\n", '[["W0", [8, 8]]]']


class QuietLog:
    def say(self, text):
        pass


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A 1-rank checkpoint and, in this process, the manager of a run that
    matches it (the loaders are called directly: no subprocess per example)."""
    from mpi4py import MPI
    from mpidsgd import train
    from mpidsgd.checkpoint.manager import CheckpointManager
    from mpidsgd.topology import Topology
    out = tmp_path_factory.mktemp("one")
    rc, o, e = launch(out, {"run.steps": 6, "checkpoint.every": 6}, n=1)
    assert rc == 0, e
    sets = {**TINY, "run.steps": 6, "run.out_dir": json.dumps(str(out / "again"))}
    args = train.parse_args([x for k, v in sets.items() for x in ("--set", f"{k}={v}")])
    topo = Topology(MPI.COMM_SELF)
    cfg, ctx = train.setup(args, topo)
    ckpt = CheckpointManager(cfg, topo, QuietLog(), algo=ctx["algo"], shard=ctx["data"].train,
                             backend=ctx["backend"], channel=ctx["channel"], meter=train.Meter())
    return str(out / "checkpoints" / "ckpt-6.h5"), ckpt


def targets(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(("dataset", n)) if hasattr(o, "dtype") else None)
        names += [("attr", k) for k in f.attrs]
    return sorted(names)


def mutate(f, target, how, pick):
    """Change one dataset (dtype, shape, value, kind) or one file attribute, or delete it."""
    what, name = target
    if what == "attr" and how == "delete":
        del f.attrs[name]
    elif what == "attr":
        f.attrs[name] = ATTR_VALUES[pick % len(ATTR_VALUES)]
    elif how == "delete":
        del f[name]
    else:
        rewrite(f, name, how, pick)


def rewrite(f, name, how, pick):
    ds = f[name]
    arr, attrs = np.asarray(ds[()]), dict(ds.attrs)
    if how == "dtype":
        arr = arr.astype(DTYPES[pick % len(DTYPES)])
    elif how == "shape":
        arr = [arr.reshape(-1)[:0], np.concatenate([arr.reshape(-1)] * 2),
               arr.reshape(1, -1), arr.reshape(-1)[:1].reshape(())][pick % 4]
    elif how == "value":
        v = VALUES[pick % len(VALUES)]
        arr = np.full(arr.shape, v, np.float64 if isinstance(v, float) else np.int64)
    else:
        attrs["kind"] = ["none", "bool", "int", "float", "str", "npscalar", "array",
                         "pickle"][pick % 8]
    parent, key = name.rsplit("/", 1) if "/" in name else ("/", name)
    del f[parent][key]
    new = f[parent].create_dataset(key, data=arr, fletcher32=arr.ndim > 0)
    for k, v in attrs.items():
        new.attrs[k] = v


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True, database=None)
@hypothesis.given(data=st.data())
def test_mutated_checkpoints_are_refused_cleanly_or_loaded(one_rank, data, tmp_path_factory):
    from mpidsgd.errors import CheckpointError
    path, mgr = one_rank
    target = data.draw(st.sampled_from(targets(path)))
    how = data.draw(st.sampled_from(["dtype", "shape", "value", "kind", "delete"]))
    pick = data.draw(st.integers(0, 63))
    bad = str(tmp_path_factory.getbasetemp() / "mutated.h5")
    shutil.copy(path, bad)
    with h5py.File(bad, "r+") as f:
        mutate(f, target, how, pick)
    try:
        mgr.resume(bad)
    except CheckpointError as exc:        # exit 2, one line, in a real run
        assert str(exc) and "\n" not in str(exc), (target, how, pick, str(exc))
