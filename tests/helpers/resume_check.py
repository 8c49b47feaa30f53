"""Exact resume, checked in-process under MPI: run A checkpoints every EVERY
steps, run B resumes from A's checkpoint at EVERY, and from there on B must
equal A bit for bit (state on every rank, metrics records, summary counts).
Used by the checkpoint tests and by each collective's own resume test."""
import json
import os
import re
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C, train
from mpidsgd.catalog import load_config, validate
from mpidsgd.checkpoint.format import flatten, list_checkpoints
from mpidsgd.topology import Topology
from mpiutil import assert_all

COMM = MPI.COMM_WORLD
N, EVERY = 20, 7          # steps; checkpoint interval (not a multiple of eval_every)
BASE = {"run.steps": N, "run.eval_every": 4, "run.log_every": 1, "run.progress": "false",
        "run.seed": 3, "data.n_samples": 256, "data.n_test": 64, "data.n_features": 8,
        "data.n_classes": 3, "data.batch_size": 16, "model.hidden": "[8]",
        "algo.name": "sgd", "algo.lr": 0.05, "algo.momentum": 0.9}


def shared_dir():
    """A fresh folder made by rank 0, its path on every rank (collective)."""
    path = tempfile.mkdtemp(prefix="mpidsgd-ckpt-") if COMM.rank == 0 else None
    return COMM.bcast(path, root=0)


def argv(out, sets=None, resume=None):
    """The train CLI's arguments for BASE + sets into `out`."""
    items = {**BASE, "run.out_dir": json.dumps(out), **(sets or {})}
    a = [x for k, v in items.items() for x in ("--set", f"{k}={v}")]
    return a + (["--resume", resume] if resume else [])


def host_state(algo):
    """Every array and scalar of the algorithm's state, as host copies, by
    path ("shared/opt/momentum_buf": nested sections flattened)."""
    st = algo.state_dict()
    return {f"{part}/{k}": np.array(algo.backend.asnumpy(v)) if hasattr(v, "shape") else v
            for part in ("shared", "local") for k, v in flatten(st[part]).items()}


def train_once(comm, out, sets=None, resume=None, hook=None):
    """One in-process run on `comm`: (summary on rank 0, final state, ctx)."""
    topo = Topology(comm)
    args = train.parse_args(argv(out, sets, resume))
    cfg, ctx = train.setup(args, topo)
    if hook:
        hook(ctx)
    summary = train.run(cfg, ctx, topo, args)
    return summary, host_state(ctx["algo"]), ctx


def records(out, after=0):
    """metrics.jsonl records after step `after`, wall times removed."""
    keep = []
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            if r["kind"] in ("train", "eval", "final") and r["step"] > after:
                r.pop("time_s", None)
                keep.append(r)
    return keep


WALL = re.compile(r"(^|_)(wall|time|wait)(_|$)|_s($|_)")   # seconds fields: *_s, *_s_rank0, ...


def comparable(summary):
    """summary.json without wall times and the checkpoint phase's own traffic."""
    s = {k: v for k, v in summary.items() if not WALL.search(k)}
    for key in ("bytes_by_phase", "messages_by_phase"):
        s[key] = {p: v for p, v in s[key].items() if p != "checkpoint"}
    return s


def same_state(a, b):
    """Keys whose values differ (bit for bit)."""
    bad = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (np.shape(x) == np.shape(y) and np.array_equal(x, y)):
                bad.append(k)
        elif x != y:
            bad.append(k)
    return bad


def check_exact(sub, ref_out, ref, res_out, res, after, what):
    """Resumed run (res) equals the reference run (ref) after step `after`."""
    diff = same_state(ref[1], res[1])
    assert_all(not diff, f"{what}: state differs in {diff}", comm=sub)
    msg = ""
    if sub.rank == 0:
        ra, rb = records(ref_out, after), records(res_out, after)
        sa, sb = comparable(ref[0]), comparable(res[0])
        ok = ra == rb and len(rb) > 0 and sa == sb
        bad = [(x, y) for x, y in zip(ra, rb) if x != y][:1] or (len(ra), len(rb))
        msg = f"records {bad}; summary {[(k, sa.get(k), sb.get(k)) for k in sa if sa.get(k) != sb.get(k)]}"
    else:
        ok = True
    msg = sub.bcast(msg)
    assert_all(ok, f"{what}: metrics or summary differ: {msg}", comm=sub)


def resume_matches(sub, base, name, sets, sizes_label):
    """Run A (checkpoint every EVERY) and B (resume from A's ckpt-EVERY)."""
    a_out, b_out = (os.path.join(base, f"{name}-{sizes_label}-{x}") for x in "AB")
    a = train_once(sub, a_out, {**sets, "checkpoint.every": EVERY, "checkpoint.keep_last": 0})
    files = [step for step in map(lambda p: int(p.rsplit("-", 1)[1][:-3]),
                                  list_checkpoints(os.path.join(a_out, "checkpoints")))]
    assert_all(sorted(files) == list(range(EVERY, N + 1, EVERY)), f"checkpoints {files}", comm=sub)
    ck = os.path.join(a_out, "checkpoints", f"ckpt-{EVERY}.h5")
    b = train_once(sub, b_out, sets, resume=ck)
    check_exact(sub, a_out, a, b_out, b, EVERY, f"{name} P={sub.size}")
    return a_out, a


def sweep_sets(name):
    """The algorithm's own defaults (no momentum: some algorithms refuse it)."""
    return {"algo.name": name, "algo.momentum": 0.0}


def world_for(name):
    """The largest of 4, 2, 1 ranks the algorithm accepts with its defaults."""
    items = {**BASE, **sweep_sets(name)}
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()], base=train.QUICKSTART)
    for P in (4, 2, 1):
        try:
            validate(cfg, P)
            return P
        except C.ConfigError:
            continue
    pytest.fail(f"{name} runs at none of 4, 2, 1 ranks with its defaults")


def expect_exit2(sub, capsys, out, sets, resume, words):
    with pytest.raises(SystemExit) as exc:
        train_once(sub, out, sets, resume=resume)
    err = capsys.readouterr().err.strip().splitlines()
    if sub.rank == 0:
        ok = exc.value.code == 2 and len(err) == 1 and all(w in err[0] for w in words)
    else:
        ok = exc.value.code == 2 and not err
    assert_all(ok, f"expected one line with {words}, got {err} (code {exc.value.code})", comm=sub)
