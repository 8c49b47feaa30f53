"""Format-version-1 checkpoints, written by the old code, still resume.

tests/checkpoint/files/v1/ holds three files written by mpidsgd at commit
2850d0b (format version 1: optimizer state under hand-written prefixes) with

    mpiexec -n 2 python -m mpidsgd.train <COMMON> <CASES[name]> \
        --set run.steps=6 --set checkpoint.every=3 --set checkpoint.keep_last=0

(the ckpt-3.h5 of each run is kept). They cover every version-1 prefix: an
unprefixed optimizer key in /shared (sgd, momentum), `outer_` in /shared
and `inner_` per rank (diloco with an AdamW inner optimizer), `opt_` per
rank (gosgd, deterministic, AdamW). Resuming one with this version must be
bit-identical to an uninterrupted run of this version: a key mapped to the
wrong optimizer (both have the same shapes) changes the trajectory.
"""
import json
import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import train
from mpidsgd.checkpoint.format import FORMAT_VERSION, flatten, info, read_group
from mpidsgd.checkpoint.migrate import to_current
from mpidsgd.topology import Topology
from mpiutil import assert_all

COMM = MPI.COMM_WORLD


V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files", "v1")
COMMON = {"run.eval_every": 0, "run.log_every": 1, "run.progress": "false", "run.seed": 3,
          "data.n_samples": 128, "data.n_test": 32, "data.n_features": 4, "data.n_classes": 3,
          "data.batch_size": 16, "model.hidden": "[4]", "algo.lr": 0.05, "run.steps": 6}
CASES = {"sgd": {"algo.name": '"sgd"', "algo.momentum": 0.9},
         "diloco": {"algo.name": '"diloco"', "algo.H": 2, "algo.optimizer": '"adamw"'},
         "gosgd": {"algo.name": '"gosgd"', "algo.deterministic": "true",
                   "algo.optimizer": '"adamw"'}}
# where each file's optimizer state lives in version 2
NESTED = {"sgd": ["shared/opt/momentum_buf"],
          "diloco": ["shared/outer/momentum_buf", "ranks/1/algo/inner/adam_m",
                     "ranks/1/algo/inner/adam_t"],
          "gosgd": ["ranks/0/algo/opt/adam_v", "ranks/1/algo/opt/adam_t"]}


def v1_file(name):
    return os.path.join(V1, f"{name}-ckpt-3.h5")


def train_once(out, sets, resume=None):
    """One in-process 2-rank run: (final state by path, metrics records)."""
    items = {**COMMON, **sets, "run.out_dir": json.dumps(out)}
    argv = [x for k, v in items.items() for x in ("--set", f"{k}={v}")]
    args = train.parse_args(argv + (["--resume", resume] if resume else []))
    topo = Topology(COMM)
    cfg, ctx = train.setup(args, topo)
    train.run(cfg, ctx, topo, args)
    algo, st = ctx["algo"], ctx["algo"].state_dict()
    state = {f"{part}/{k}": np.array(algo.backend.asnumpy(v)) if hasattr(v, "shape") else v
             for part in ("shared", "local") for k, v in flatten(st[part]).items()}
    recs = []
    if COMM.rank == 0:
        with open(os.path.join(out, "metrics.jsonl")) as fh:
            recs = [r for r in map(json.loads, fh) if r["kind"] == "train" and r["step"] > 3]
        for r in recs:
            r.pop("time_s", None)
    return state, recs


def differing(a, b):
    bad = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        if not (np.shape(a[k]) == np.shape(b[k]) and np.array_equal(a[k], b[k])):
            bad.append(k)
    return bad


def stored(path):
    """Every value of a checkpoint, read as this version reads it, by path."""
    with h5py.File(path, "r") as f:
        version = int(f.attrs["format_version"])
        out = {f"shared/{k}": v for k, v in to_current(read_group(f["shared"]), version,
                                                       "shared").items()}
        for r in f["ranks"]:
            out.update({f"ranks/{r}/{k}": v for k, v in
                        to_current(read_group(f[f"ranks/{r}"]), version, "rank").items()})
    return out


@pytest.mark.parallel(nprocs=2)
def test_version_1_files_resume_bit_identically_through_the_migration():
    base = COMM.bcast(tempfile.mkdtemp(prefix="mpidsgd-v1-") if COMM.rank == 0 else None)
    for name, sets in CASES.items():
        ref_out, res_out = (os.path.join(base, f"{name}-{x}") for x in ("ref", "res"))
        ref = train_once(ref_out, {**sets, "checkpoint.every": 3, "checkpoint.keep_last": 0})
        res = train_once(res_out, sets, resume=v1_file(name))
        diff = differing(ref[0], res[0])
        assert_all(not diff, f"{name}: state after resuming the v1 file differs in {diff}")
        assert_all(COMM.rank or (res[1] and res[1] == ref[1]),
                   f"{name}: metrics after step 3 differ")
        if COMM.rank == 0:
            # the migrated v1 file and this version's own ckpt-3 hold the same
            # values under the same nested paths, bit for bit
            old = stored(v1_file(name))
            new = stored(os.path.join(ref_out, "checkpoints", "ckpt-3.h5"))
            keys = [k for k in new if not k.endswith("train/elapsed_s")]    # wall time
            bad = sorted(set(old) ^ set(new))
            bad += [k for k in keys if k in old and not np.array_equal(old[k], new[k])]
            ok = not bad and all(k in new for k in NESTED[name])
        else:
            ok, bad = True, []
        assert_all(ok, f"{name}: migrated v1 file vs this version's checkpoint: {bad}")
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parallel(nprocs=2)
def test_a_version_1_layout_claiming_version_2_is_refused_in_one_line(capsys):
    """The migration follows the format_version attribute: flat keys in a file
    that says 2 are missing nested state (one line, exit 2, every rank)."""
    base = COMM.bcast(tempfile.mkdtemp(prefix="mpidsgd-v1-") if COMM.rank == 0 else None)
    bad = os.path.join(base, "ckpt-3.h5")
    if COMM.rank == 0:
        shutil.copy(v1_file("sgd"), bad)
        with h5py.File(bad, "r+") as f:
            f.attrs["format_version"] = FORMAT_VERSION
    COMM.Barrier()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_once(os.path.join(base, "out"), CASES["sgd"], resume=bad)
    err = capsys.readouterr().err.strip().splitlines()
    want = ["mpidsgd: error:", bad, "missing ['opt/momentum_buf']", "unexpected ['momentum_buf']"]
    ok = exc.value.code == 2 and (COMM.rank or (len(err) == 1 and all(w in err[0] for w in want)))
    assert_all(ok, f"got {err} (exit {exc.value.code})")


def test_info_lists_a_version_1_file_as_stored_and_says_how_it_is_read(capsys):
    assert info(v1_file("diloco")) == 0
    out = capsys.readouterr().out
    assert "format_version = 1" in out and "/shared/outer_momentum_buf" in out
    assert "/ranks/1/algo/inner_adam_m" in out and "verdict: valid" in out
    assert f"a resume reads it as version {FORMAT_VERSION}" in out


def test_the_migration_maps_every_version_1_prefix_and_leaves_the_rest():
    flat = {"momentum_buf": 1, "outer_momentum_buf": 2, "params": 3, "opt_adam_t": 4,
            "pending_delta": 5, "outer_lr": 6}
    assert to_current(flat, 1, "shared") == {"opt/momentum_buf": 1, "outer/momentum_buf": 2,
                                             "params": 3, "opt/adam_t": 4, "pending_delta": 5,
                                             "outer_lr": 6}
    rank = {"algo/inner_adam_m": 1, "algo/opt_adam_v": 2, "data/pos": 3, "model/adam_m": 4}
    assert to_current(rank, 1, "rank") == {"algo/inner/adam_m": 1, "algo/opt/adam_v": 2,
                                           "data/pos": 3, "model/adam_m": 4}
    assert to_current(rank, 2, "rank") is rank
