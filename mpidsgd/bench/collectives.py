"""`mpiexec -n P python -m mpidsgd.bench collectives`: allreduce schemes on
the same gradient, timed whole (selection, packing, communication, unpacking).

Schemes: dense MPI Allreduce (`dense-mpi`), dense ring (`dense-ring`),
`topka`, `gtopk` (power-of-two P), `spardl` with d = 1 and every valid team
count d (B-SAG always, R-SAG for power-of-two d), `oktopk` and
`oktopk-exact`. Every rank holds its own seeded gradient of n values; sparse
schemes start each run from a zero residual (reset untimed), so every
repetition does the same work, except Ok-Topk, whose state persists across
its calls (bench/_oktopk.py: the steady threshold-reuse step after a
warm-up of threshold_every calls; the exact-threshold step on its own row).

Per scheme and emulation setting one JSON record:
    ms                 median over --reps (after one warm-up) of the slowest
                       rank's time for one call, between two barriers
    bytes_per_rank     bytes sent per call, mean over ranks (counted by the Channel)
    messages_per_rank  messages per call, mean over ranks
    predicted_bytes    comm/costmodel's bytes per rank (mean over ranks)
    predicted_ms       alpha-beta time of the longest path under the emulated
                       network (communication only; null without emulation)
    lower_bound_bytes  sparse lower bound k(P-1)/P entries (Ok-Topk Thm 3.1;
                       null for dense schemes)
    ratio_vs_dense     ms / ms of dense-mpi in the same setting
--emulate alpha,beta charges alpha seconds per message and beta seconds per
byte as sleep in the Channel; repeat it (and `none`) to measure several
networks in one run. The machine may be shared: the load average is printed.
--device cuda puts the gradient in GPU memory (CuPy; one GPU per rank by
node-local rank): selection runs in the CUDA kernels and MPI reads pinned host
copies, or the device buffers themselves with --cuda-aware (--cuda-aware
compare: both, one after the other, in the same run; only the staged pass
where MPI is not CUDA-aware, comm/cuda_aware.py).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from .kernels import cpu_name, ints


def register(sub):
    p = sub.add_parser("collectives", help="dense vs sparse allreduce: ms, bytes, messages, "
                                           "cost model", description=__doc__)
    p.add_argument("--n", type=ints, default=[2**24], help="gradient length (default 2^24)")
    p.add_argument("--density", type=float, default=0.01, help="k / n (default 0.01)")
    p.add_argument("--teams", type=ints, default=None,
                   help="SparDL team counts to run besides d = 1 (default: every divisor of P)")
    p.add_argument("--emulate", action="append", default=None, metavar="ALPHA,BETA|none",
                   help="emulated network (repeatable; default none)")
    p.add_argument("--schemes", default=None, help="comma-separated scheme names to keep")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the gradient lives: cuda = CuPy arrays and the CUDA kernels, one "
                        "GPU per rank by node-local rank (default cpu)")
    p.add_argument("--cuda-aware", dest="cuda_aware_mode", nargs="?", const="on",
                   default="off", choices=["off", "on", "compare"],
                   help="hand device buffers to MPI directly (CUDA-aware MPI only; refused "
                        "where the library says it is not); compare = run every scheme "
                        "staged, then CUDA-aware, in one run; default: staged through "
                        "pinned host memory")
    p.add_argument("--reps", type=int, default=5, help="timed calls per scheme (median)")
    p.add_argument("--oktopk-steps", type=int, default=0, metavar="N",
                   help="also report Ok-Topk's mean traffic over N consecutive steps on fresh "
                        "gradients (every n, no emulation), against its bound")
    p.add_argument("--json", metavar="FILE", help="write the records, one JSON object a line")
    p.set_defaults(func=run)


def _emulations(specs):
    out = []
    for spec in specs or ["none"]:
        if spec == "none":
            out.append((0.0, 0.0))
        else:
            a, b = spec.split(",")
            out.append((float(a), float(b)))
    return out


# ---------------------------------------------------------------- schemes

class Scheme:
    """One allreduce scheme: `call()` does one whole step, `reset()` the
    untimed preparation, `predicted` (bytes mean, bytes path, messages path)."""

    def __init__(self, name, k, call, reset, predicted, sparse=True, free=None):
        self.name, self.k, self.call, self.reset = name, k, call, reset
        self.predicted, self.sparse, self.free = predicted, sparse, free


def schemes(ch, g, density, teams, keep):
    """Constructors of every scheme that applies to this world size."""
    from ..comm import costmodel as cm
    from ..comm.dense import allreduce_sum, ring_allreduce_sum
    from ..comm.gtopk import gtopk, is_power_of_two
    from ..comm.topka import topka
    P, n, s = ch.size, g.size, g.dtype.itemsize
    k = max(1, min(n, int(np.floor(n * density))))
    xp = ch.backend.xp
    buf, res, out = xp.empty_like(g), xp.zeros_like(g), xp.empty_like(g)

    def dense(name, fn, model):
        def make():
            b, m = model(n, s, P)
            return Scheme(name, n, lambda: fn(buf, channel=ch), lambda: buf.__setitem__(
                Ellipsis, g), (b, b, m), sparse=False)
        return make

    def ef(name, fn, model, path):
        def make():
            b = model(k, s, P)[0]
            pb, pm = path(k, s, P)
            return Scheme(name, k, lambda: fn(g, res, k, channel=ch, out=out),
                          lambda: res.fill(0), (b, pb, pm))
        return make

    def spardl(d, sag):
        def make():
            from ..comm.spardl import SparDL
            sd = SparDL(n, g.dtype, density, channel=ch, teams=d, sag=sag)
            b, m = cm.spardl(n, s, P, density, teams=d, sag=sag)
            name = "spardl" if d == 1 else f"spardl-d{d}-{'bsag' if sag == 'bruck' else 'rsag'}"
            # every call starts fresh: zero residual, B-SAG's h at h_0
            return Scheme(name, (P // d) * sd.k_b, lambda: sd.allreduce(g, out), sd.reset,
                          (b, b, m), free=sd.free)
        return make

    made = [("dense-mpi", dense("dense-mpi", allreduce_sum, cm.dense_rabenseifner)),
            ("dense-ring", dense("dense-ring", ring_allreduce_sum, cm.dense_ring)),
            ("topka", ef("topka", topka, cm.topka, cm.topka))]
    if is_power_of_two(P):
        made.append(("gtopk", ef("gtopk", gtopk, cm.gtopk, cm.gtopk_path)))
    made.append(("spardl", spardl(1, "bruck")))
    ds = teams if teams is not None else [d for d in range(2, P + 1) if P % d == 0]
    for d in ds:
        if d <= 1 or P % d:
            continue
        made.append((f"spardl-d{d}-bsag", spardl(d, "bruck")))
        if d & (d - 1) == 0:
            made.append((f"spardl-d{d}-rsag", spardl(d, "recursive")))
    return [(name, make) for name, make in made if keep is None or name in keep
            or name.split("-d")[0] in keep]


# ---------------------------------------------------------------- timing

def time_scheme(ch, sc, reps):
    """(median ms of the slowest rank, bytes, messages per call on this rank).

    The scheme's traffic is booked under the channel's default label (its
    sub-channels book there too); barriers and timing reductions under "sync"."""
    label = ch.label
    b0 = ch.counters.bytes.get(label, 0.0)
    m0 = ch.counters.messages.get(label, 0)
    times = []
    for i in range(reps + 1):
        sc.reset()
        with ch.phase("sync"):
            ch.Barrier()
        ch.backend.synchronize()
        t0 = time.perf_counter()
        sc.call()
        ch.backend.synchronize()        # a GPU step ends when its last kernel does
        dt = time.perf_counter() - t0
        with ch.phase("sync"):
            dt = float(ch.allreduce_values([dt], op=_max())[0])
        if i:
            times.append(dt)
    calls = reps + 1
    return (1e3 * float(np.median(times)), (ch.counters.bytes.get(label, 0.0) - b0) / calls,
            (ch.counters.messages.get(label, 0) - m0) / calls)


def _max():
    from mpi4py import MPI
    return MPI.MAX


def bench(topo, backend, n, args, alpha, beta, keep):
    from ..comm import costmodel as cm
    from ..comm.channel import Channel, NetworkEmulation
    ch = Channel(topo.world, backend=backend, emulate=NetworkEmulation(alpha, beta))
    P = ch.size
    g = backend.asarray(np.random.default_rng([1, ch.rank]).standard_normal(n).astype(args.dtype))
    s = g.dtype.itemsize
    records, dense_ms = [], None
    for name, make in schemes(ch, g, args.density, args.teams, keep):
        sc = make()
        ms, b, m = time_scheme(ch, sc, args.reps)
        with ch.phase("sync"):
            tot = ch.allreduce_values([b, m, b, b])
        with ch.phase("sync"):
            mx = ch.allreduce_values([b], op=_max())
        if sc.free:
            sc.free()
        if name == "dense-mpi":
            dense_ms = ms
        pb, path_b, path_m = sc.predicted
        emulated = alpha > 0 or beta > 0
        records.append(dict(
            scheme=name, P=P, n=n, k=sc.k, dtype=args.dtype, density=args.density,
            device=args.device, cuda_aware=bool(args.cuda_aware),
            alpha=alpha, beta=beta, ms=round(ms, 3),
            bytes_per_rank=tot[0] / P, max_bytes_per_rank=float(mx[0]),
            messages_per_rank=tot[1] / P, predicted_bytes=pb,
            predicted_ms=round(1e3 * cm.alpha_beta_time(path_b, path_m, alpha, beta), 3)
            if emulated else None,
            lower_bound_bytes=cm.sparse_lower_bound(sc.k, s, P) if sc.sparse else None,
            ratio_vs_dense=round(ms / dense_ms, 4) if dense_ms else None))
    if keep is None or "oktopk" in keep:
        from ._oktopk import oktopk_records
        records += oktopk_records(ch, g, args, alpha, beta, dense_ms, _max())
    return records


def _gpu_name(backend, compared=False):
    """'no GPU' or the device's name, staging mode included."""
    if backend.device != "cuda":
        return "no GPU (NumPy arrays)"
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(backend.gpu)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    how = "CUDA-aware MPI" if backend.cuda_aware else "staged through pinned host memory"
    if compared:
        how = "staged through pinned host memory, then CUDA-aware MPI (column mpi)"
    return f"GPU {name} (CuPy arrays, {how})"


def print_table(records, where):
    print(f"collectives: {where}")
    both = len({r["cuda_aware"] for r in records}) > 1
    print(f"{'network':>16} {'scheme':<18} {'P':>3} {'k':>9} {'ms':>9} {'MB/rank':>9} "
          f"{'msgs':>6} {'pred MB':>9} {'pred ms':>8} {'x LB':>6} {'vs dense':>8}"
          + (f" {'mpi':>6}" if both else ""))
    for r in records:
        mpi = (f" {'aware' if r['cuda_aware'] else 'staged':>6}") if both else ""
        net = "none" if not (r["alpha"] or r["beta"]) else f"{r['alpha']:g},{r['beta']:g}"
        lb = r["lower_bound_bytes"]
        xlb = f"{r['bytes_per_rank'] / lb:.2f}" if lb else "-"
        pm = "-" if r["predicted_ms"] is None else f"{r['predicted_ms']:.1f}"
        vs = "-" if r["ratio_vs_dense"] is None else f"{r['ratio_vs_dense']:.3f}x"
        print(f"{net:>16} {r['scheme']:<18} {r['P']:>3} {r['k']:>9} {r['ms']:>9.2f} "
              f"{r['bytes_per_rank'] / 1e6:>9.3f} {r['messages_per_rank']:>6.2f} "
              f"{r['predicted_bytes'] / 1e6:>9.3f} {pm:>8} {xlb:>6} {vs:>8}{mpi}")


def _oktopk_traffic(topo, backend, args):
    if args.oktopk_steps <= 0:
        return []
    from ..comm.channel import Channel
    from ._oktopk import oktopk_traffic
    ch = Channel(topo.world, backend=backend)
    return [oktopk_traffic(ch, n, args, args.oktopk_steps) for n in args.n]


def _mpi_modes(args, root):
    """The staging modes to run ([False], [True] or [False, True]), or None
    (and one error line) when CUDA-aware MPI is asked of a library without it."""
    mode = getattr(args, "cuda_aware_mode", "off")
    if args.device != "cuda" or mode == "off":
        return [False]
    from ..comm.cuda_aware import cuda_support, refusal
    ok, why = cuda_support()
    if ok is False and mode == "on":
        if root:
            print(f"mpidsgd: error: --cuda-aware: {refusal(why)}", flush=True)
        return None
    if ok is False:
        if root:
            print(f"mpidsgd: --cuda-aware compare: MPI is not CUDA-aware ({why}): staged only")
        return [False]
    return [True] if mode == "on" else [False, True]


def run(args):
    from ..backend import Backend
    from ..topology import Topology
    topo = Topology()
    modes = _mpi_modes(args, topo.is_root)
    if modes is None:
        return 2
    keep = set(args.schemes.split(",")) if args.schemes else None
    records = []
    for aware in modes:
        args.cuda_aware = aware                 # the records' and Ok-Topk's field
        backend = Backend(args.device, aware, topo.local_rank)
        for n in args.n:
            for alpha, beta in _emulations(args.emulate):
                records += bench(topo, backend, n, args, alpha, beta, keep)
    traffic = _oktopk_traffic(topo, backend, args)
    if topo.is_root:
        load = os.getloadavg()
        where = (f"{cpu_name()}, {os.cpu_count()} cores, {topo.size} ranks; "
                 f"{_gpu_name(backend, len(modes) > 1)}; dtype "
                 f"{args.dtype}, density {args.density}, median of {args.reps}; "
                 f"load average {load[0]:.2f} {load[1]:.2f}")
        print_table(records, where)
        from ._oktopk import print_traffic
        for r in traffic:
            print_traffic(r)
        records += traffic
        if args.json:
            with open(args.json, "w") as fh:
                for r in records:
                    fh.write(json.dumps(r) + "\n")
    return 0
