"""GPU checks under MPI, started by tests/gpu/test_gpu.py as `mpiexec -n 4 python
tests/gpu/mpi_check.py OUT_DIR` on a machine with a CUDA GPU (the ranks may
share one GPU). Two parts:

1. Collectives on CuPy arrays against the NumPy path on the same inputs:
   SparDL at P = 1, 2, 4 (d = 1, teams 2 and 4, B-SAG and R-SAG), TopkA and
   gTop-k; outputs and residuals equal to 1e-12 (float64), the same final
   support, and the same counted bytes and messages.
2. Every synchronous training algorithm, the same run (float64) with
   run.device = "cpu" and "cuda": the final state (parameters, optimizer
   state, residuals, tables) equal to 1e-9 relative, and the same bytes and
   messages per phase. A wrong weight, a lost message or a skipped staging copy
   on the GPU path shows as a difference far above that.

Prints one line per case; exits 1 if any case failed on any rank.
"""
import json
import os
import sys
import traceback

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers"))

from mpiutil import sub_comms  # noqa: E402

COMM = MPI.COMM_WORLD
RESULTS = []          # this rank's (case, ok, why), gathered at the end


def report(name, ok, why=""):
    RESULTS.append((name, bool(ok), why))


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def summarize():
    """Rank 0 prints one line per case (failed if it failed on any rank);
    returns the number of failed cases on every rank."""
    lists = COMM.gather(RESULTS, root=0)
    nfail = 0
    if COMM.rank == 0:
        cases = {}
        for r, lst in enumerate(lists):
            for name, ok, why in lst:
                cases.setdefault(name, []).append((r, ok, why))
        for name, res in cases.items():
            bad = [(r, w) for r, ok, w in res if not ok]
            nfail += bool(bad)
            print(f"{'ok  ' if not bad else 'FAIL'} {name} (ranks {[r for r, _, _ in res]})"
                  + (f": {bad[:2]}" if bad else ""), flush=True)
    return COMM.bcast(nfail, root=0)


def close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
    err = float(np.max(np.abs(a - b), initial=0.0))
    return err <= rtol * scale, f"max abs diff {err:.3g} (scale {scale:.3g})"


# ------------------------------------------------------------ 1. collectives

def collectives():
    import cupy as cp

    from mpidsgd.backend import Backend
    from mpidsgd.comm.channel import Channel
    from mpidsgd.comm.gtopk import gtopk, is_power_of_two
    from mpidsgd.comm.spardl import SparDL
    from mpidsgd.comm.topka import topka

    from mpidsgd.topology import Topology
    cpu_be = Backend("cpu")
    gpu_be = Backend("cuda", local_rank=Topology(COMM).local_rank)
    n, density = 10007, 0.02
    for P, sub in sub_comms([1, 2, 4], COMM):
        if sub == MPI.COMM_NULL:
            continue
        chc, chg = Channel(sub, backend=cpu_be), Channel(sub, backend=gpu_be)
        cases = [(d, s) for d in (1, 2, 4) if P % d == 0
                 for s in (("bruck", "recursive") if d > 1 else ("bruck",))]
        for d, sag in cases:
            name = f"spardl P={P} d={d} {sag} on CuPy"
            try:
                a = SparDL(n, np.float64, density, channel=chc, teams=d, sag=sag)
                b = SparDL(n, np.float64, density, channel=chg, teams=d, sag=sag)
                ok, why = True, ""
                for step in range(3):
                    g = np.random.default_rng([step, P, d, sub.rank]).standard_normal(n)
                    c0 = chc.counters.snapshot()
                    oa = a.allreduce(g.copy())
                    c1 = chc.counters.snapshot()
                    g0 = chg.counters.snapshot()
                    ob = b.allreduce(cp.asarray(g))
                    g1 = chg.counters.snapshot()
                    for what, x, y in (("out", oa, host(ob)),
                                       ("residual", a.residual(), host(b.residual()))):
                        c, w = close(x, y, 1e-12)
                        if not c:
                            ok, why = False, f"step {step} {what}: {w}"
                    if not np.array_equal(np.sort(a.support()), np.sort(host(b.support()))):
                        ok, why = False, f"step {step}: supports differ"
                    dc = _delta(c0, c1)
                    dg = _delta(g0, g1)
                    if dc != dg:
                        ok, why = False, f"step {step}: traffic cpu {dc} vs cuda {dg}"
                a.free()
                b.free()
            except Exception:
                ok, why = False, traceback.format_exc(limit=3)[-600:]
            report(name, ok, why)
        for fname, fn in (("topka", topka), ("gtopk", gtopk)):
            if fname == "gtopk" and not is_power_of_two(P):
                continue
            name = f"{fname} P={P} on CuPy"
            try:
                k = int(n * density)
                ra, rb = np.zeros(n), cp.zeros(n)
                ok, why = True, ""
                for step in range(3):
                    g = np.random.default_rng([7, step, P, sub.rank]).standard_normal(n)
                    oa, ob = np.empty(n), cp.empty(n)
                    fn(g, ra, k, channel=chc, out=oa)
                    fn(cp.asarray(g), rb, k, channel=chg, out=ob)
                    for what, x, y in (("out", oa, host(ob)), ("residual", ra, host(rb))):
                        c, w = close(x, y, 1e-12)
                        if not c:
                            ok, why = False, f"step {step} {what}: {w}"
            except Exception:
                ok, why = False, traceback.format_exc(limit=3)[-600:]
            report(name, ok, why)


def _delta(s0, s1):
    """Bytes and messages per phase booked between two counter snapshots."""
    return {(kind, ph): d1[ph] - d0.get(ph, 0)
            for kind, d0, d1 in (("bytes", s0[0], s1[0]), ("messages", s0[1], s1[1]))
            for ph in d1 if d1[ph] != d0.get(ph, 0)}


# ------------------------------------------------------------ 2. training

BASE = {"run.steps": 20, "run.eval_every": 10, "run.log_every": 5, "run.progress": "false",
        "run.seed": 3, "run.dtype": "float64", "data.n_samples": 512, "data.n_test": 64,
        "data.n_features": 8, "data.n_classes": 3, "data.batch_size": 16,
        "model.hidden": "[16]", "algo.lr": 0.05, "algo.momentum": 0.0}


def train_state(comm, out, sets):
    from mpidsgd import train
    from mpidsgd.checkpoint.format import flatten
    from mpidsgd.topology import Topology
    items = {**BASE, "run.out_dir": json.dumps(out), **sets}
    args = train.parse_args([x for k, v in items.items() for x in ("--set", f"{k}={v}")])
    topo = Topology(comm)
    cfg, ctx = train.setup(args, topo)
    summary = train.run(cfg, ctx, topo, args)
    algo = ctx["algo"]
    st = algo.state_dict()
    state = {f"{part}/{k}": np.array(algo.backend.asnumpy(v)) if hasattr(v, "shape") else v
             for part in ("shared", "local") for k, v in flatten(st[part]).items()}
    counters = ctx["channel"].counters
    traffic = {ph: (counters.bytes.get(ph, 0), counters.messages.get(ph, 0))
               for ph in ("train", "eval")}
    return state, summary, traffic


def training(out_dir):
    from mpidsgd import train
    from mpidsgd.catalog import load_config
    from mpidsgd.algorithms import REGISTRY
    names = sorted(n for n, cls in REGISTRY.items() if cls.synchronous)
    for name in names:
        sets = {"algo.name": name}
        cfg = load_config(None, [f"{k}={v}" for k, v in {**BASE, **sets}.items()],
                 base=train.QUICKSTART)
        P = next(p for p in (4, 2, 1) if _accepts(REGISTRY[name], cfg, p))
        for _, sub in sub_comms([P], COMM):
            ok, why = True, ""
            if sub == MPI.COMM_NULL:
                continue
            try:
                base = os.path.join(out_dir, f"{name}-P{P}")
                sc, _, tc = train_state(sub, base + "-cpu", {**sets, "run.device": "cpu"})
                sg, _, tg = train_state(sub, base + "-cuda", {**sets, "run.device": "cuda"})
                if set(sc) != set(sg):
                    ok, why = False, f"state keys differ: {sorted(set(sc) ^ set(sg))}"
                for k in sorted(set(sc) & set(sg)):
                    x, y = sc[k], sg[k]
                    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
                        c, w = close(x, y, 1e-9)
                    else:
                        c, w = bool(np.array_equal(x, y)), f"{x!r} vs {y!r}"[:200]
                    if not c:
                        ok, why = False, f"{k}: {w}"
                if tc != tg:
                    ok, why = False, f"traffic cpu {tc} vs cuda {tg}"
            except Exception:
                ok, why = False, traceback.format_exc(limit=4)[-800:]
            report(f"train {name} P={P}: cuda == cpu", ok, why)


def _accepts(cls, cfg, P):
    from mpidsgd import config as C
    from mpidsgd.catalog import validate
    try:
        validate(cfg, P)
        return True
    except C.ConfigError:
        return False


if __name__ == "__main__":
    out = sys.argv[1]
    for name, part in (("collectives", collectives), ("training", lambda: training(out))):
        try:
            part()
        except Exception:
            report(name, False, traceback.format_exc(limit=4)[-800:])
    nfail = summarize()
    if COMM.rank == 0:
        print(f"{nfail} failed" if nfail else "all passed", flush=True)
    sys.exit(1 if nfail else 0)

