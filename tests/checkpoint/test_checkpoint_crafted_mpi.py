"""Checkpoints that do not fit the run, under MPI (4 ranks): another
architecture with the same parameter count, crafted absurd values (2^62
steps, negative counts, an array for a count, bytes for an integer,
wrong-shaped byte counters, NaN parameters): exit 2, one line naming the
field, the same on every rank."""
import os

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from resume_check import EVERY, expect_exit2, shared_dir, train_once

COMM = MPI.COMM_WORLD


# -- files that do not fit the run: another architecture, crafted values --------------
def craft(src, dst, edit):
    """Rank 0: copy checkpoint `src` to `dst` and apply `edit(h5file)`."""
    import shutil
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)


def set_value(name, value):
    """An edit that stores `value` as dataset `name`, with its checksum, as
    the writer would (kind and shape attributes from the value)."""
    from mpidsgd.checkpoint.format import encode, write_array

    def edit(f):
        parent, key = name.rsplit("/", 1)
        del f[parent][key]
        write_array(f[parent], key, *encode(value))
    return edit


def set_raw(name, arr, kind):
    """An edit that stores raw `arr` under `name` with the `kind` attribute."""
    def edit(f):
        parent, key = name.rsplit("/", 1)
        del f[parent][key]
        f[parent].create_dataset(key, data=arr, fletcher32=True).attrs["kind"] = kind
    return edit


def set_attr(key, value):
    def edit(f):
        f.attrs[key] = value
    return edit


def set_element(name, index, value):
    def edit(f):
        f[name][index] = value
    return edit


CRAFTED = [   # (edit, words of the one error line)
    (set_attr("step", 2 ** 62), ["attribute step is 4611686018427387904", "< 2^53"]),
    (set_attr("step", -3), ["attribute step is -3", ">= 0"]),
    (set_attr("epoch", 2.0 ** 62), ["attribute epoch", "< 2^53"]),
    (set_attr("step", np.bytes_(b"14")), ["attribute step is a str", "expected int"]),
    (set_value("shared/step", -1), ["/shared/step is -1", ">= 0"]),
    (set_value("ranks/0/data/epoch", np.int64(2 ** 62)), ["/ranks/0/data/epoch", "< 2^53"]),
    (set_value("ranks/2/train/loss_n", -5), ["/ranks/2/train/loss_n is -5", ">= 0"]),
    (set_value("ranks/2/train/loss_n", 10 ** 6), ["/ranks/2/train/loss_n", "more than the 14 steps"]),
    (set_value("ranks/1/algo/samples", np.arange(3)), ["/ranks/1/algo/samples is an array",
                                                       "expected int"]),
    (set_raw("ranks/1/algo/samples", np.array([b"12"]), "int"), ["/ranks/1/algo/samples",
                                                               "cannot hold an int"]),
    (set_value("ranks/3/comm/train", np.zeros(3)), ["/ranks/3/comm/train has shape (3,)",
                                                    "expected (2,)"]),
    (set_value("ranks/3/comm/train", np.array([-1.0, 2.0])), ["/ranks/3/comm/train", ">= 0"]),
    (set_element("shared/params", 0, np.nan), ["/shared/params holds non-finite values"]),
    # nested state (the optimizer's section) is checked like any other value
    (set_value("shared/opt/momentum_buf", np.zeros(3, np.float32)),
     ["/shared/opt/momentum_buf has shape (3,)", "expected (63,)"]),
    (set_element("shared/opt/momentum_buf", 2, np.inf),
     ["/shared/opt/momentum_buf holds non-finite"]),
    (set_value("ranks/0/train/loss_acc", float("inf")), ["/ranks/0/train/loss_acc is not finite"]),
]


def trained_h5(base):
    """A 4-rank run of model.hidden = [5] with checkpoints at 7 and 14."""
    out = os.path.join(base, "h5")
    train_once(COMM, out, {"model.hidden": "[5]", "checkpoint.every": EVERY,
                           "checkpoint.keep_last": 0})
    return os.path.join(out, "checkpoints", f"ckpt-{2 * EVERY}.h5")


@pytest.mark.parallel(nprocs=4)
def test_another_architecture_with_the_same_parameter_count_exits_2(capsys):
    """model.hidden [5] and [4, 3] both have 63 parameters at 8 features and 3
    classes, as have 8 features / 3 classes and 2 features / 8 classes: the
    [model] section, then the layout of every view, tells them apart."""
    base = shared_dir()
    ck = trained_h5(base)
    capsys.readouterr()
    expect_exit2(COMM, capsys, os.path.join(base, "x"), {"model.hidden": "[4, 3]"}, ck,
                 ["another model", "model.hidden = [5] in the checkpoint, [4, 3] in this run"])
    expect_exit2(COMM, capsys, os.path.join(base, "x"),
                 {"model.hidden": "[5]", "data.n_features": 2, "data.n_classes": 8}, ck,
                 ["another model layout", "W0(8, 5)", "in the checkpoint, W0(2, 5)"])


@pytest.mark.parallel(nprocs=4)
def test_crafted_absurd_values_exit_2_naming_the_field(capsys):
    """One line naming the field, the same on every rank (only the rank that
    owns /ranks/<r> sees a per-rank problem)."""
    base = shared_dir()
    ck = trained_h5(base)
    capsys.readouterr()
    for i, (edit, words) in enumerate(CRAFTED):
        bad = os.path.join(base, f"crafted-{i}.h5")
        if COMM.rank == 0:
            craft(ck, bad, edit)
        COMM.Barrier()
        expect_exit2(COMM, capsys, os.path.join(base, "x"), {"model.hidden": "[5]"}, bad,
                     [bad] + words)
