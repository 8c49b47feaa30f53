"""`python -m mpidsgd.bench kernels`: the kernels against their baselines.

Every operation and its baselines run in the same process on the same arrays;
the same run times one read pass over x (x.max(); a device reduction on GPU)
and a copy, so each time is also given in passes over memory:

    passes  = ms / (one read pass over the n-element input)
    GB/s    = useful bytes / time (topk_abs, topk_abs_blocks, threshold_select: n*s; ef_select:
              3n*s (read grad, residual; write residual); mix: 3n*s;
              momentum_step: 5n*s (read g; read and write v, x);
              scatter_add: k*(4 + 3s); pack/unpack: 2k*(4 + s); s = value size)
    speedup = baseline ms / ms
Baselines (CPU): np.argpartition(np.abs(x), n-k) for top-k, the plain NumPy
composition for ef_select, threshold_select, mix and momentum_step (the
SGD update as NumPy array operations, without the subnormal flush), np.add.at for
scatter_add, the NumPy reference for pack/unpack. GPU: cupy.argpartition and a
full cupy.argsort for top-k, CuPy compositions, cupyx.scatter_add.
topk_abs_blocks selects k/B in each of B = --blocks equal blocks of x (a
SparDL step's blocks) in one call; its baseline is argpartition along the
rows of the (B, n/B) view.
Each figure is the median of --reps runs after one warm-up; in-place
operations get fresh inputs (untimed) before each run. The Numba kernels run
with each thread count of --threads (numba.set_num_threads); NumPy baselines
are single-threaded and timed once per size. Numbers depend on what else the
machine runs: the load average is printed with the table.
"""
import json
import os
import platform
import time

import numpy as np

MB = 1e6


def register(sub):
    p = sub.add_parser("kernels", help="kernel speed vs baselines (ms, passes, GB/s)",
                       description=__doc__)
    p.add_argument("--n", type=ints, default=[2**24, 2**21],
                   help="vector lengths, comma-separated; 2^24 style allowed "
                        "(default 2^24,2^21)")
    p.add_argument("--density", type=float, default=0.01, help="k / n (default 0.01)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=ints, default=None,
                   help="Numba thread counts, comma-separated (default 1 and all)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--blocks", type=int, default=8,
                   help="blocks of the batched top-k row, topk_abs_blocks (default 8)")
    p.add_argument("--reps", type=int, default=9, help="timed runs per figure (median)")
    p.add_argument("--json", metavar="FILE", help="write the records, one JSON object a line")
    p.set_defaults(func=run)


def ints(text):
    """A comma-separated list of integers, 2^24 style allowed (argparse type)."""
    out = []
    for part in text.split(","):
        base, _, exp = part.strip().partition("^")
        out.append(int(base) ** int(exp) if exp else int(base))
    return out


# ---------------------------------------------------------------- timing

def median_ms(fn, reps, setup=None, sync=lambda: None):
    """Median wall time of fn() over reps runs after one warm-up run."""
    times = []
    for i in range(reps + 1):
        if setup is not None:
            setup()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


class Table:
    """Records and the printed table; `base` is the ms of the row's baseline."""

    def __init__(self, device, dtype):
        self.device, self.dtype, self.records = device, np.dtype(dtype), []

    def add(self, op, impl, threads, n, k, ms, read_ms, nbytes, base_ms):
        self.records.append(dict(
            op=op, impl=impl, device=self.device, dtype=self.dtype.name, threads=threads,
            n=n, k=k, ms=round(ms, 4), passes=round(ms / read_ms, 3),
            gbps=round(nbytes / (ms * 1e-3) / 1e9, 3),
            speedup=round(base_ms / ms, 3) if base_ms else None))

    def print(self):
        cols = ("n", "k", "threads", "op", "impl", "ms", "passes", "gbps", "speedup")
        print(f"{'n':>9} {'k':>7} {'thr':>3}  {'op':<16} {'impl':<18} {'ms':>9} "
              f"{'passes':>7} {'GB/s':>7} {'speedup':>8}")
        for r in self.records:
            n, k, thr, op, impl, ms, passes, gbps, sp = (r[c] for c in cols)
            sp = "" if sp is None else f"{sp:.2f}x"
            thr = "-" if thr is None else thr
            print(f"{n:>9} {k:>7} {thr:>3}  {op:<16} {impl:<18} {ms:>9.3f} "
                  f"{passes:>7.2f} {gbps:>7.1f} {sp:>8}")


# ---------------------------------------------------------------- workloads

def _inputs(xp, n, k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    res = (0.1 * rng.standard_normal(n)).astype(dtype)
    idx = rng.integers(0, n, k).astype(np.int32)         # repeats included
    val = rng.standard_normal(k).astype(dtype)
    t = np.partition(np.abs(x), n - k)[n - k]            # ~k entries pass
    return [xp.asarray(a) for a in (x, res, idx, val)] + [float(t)]


def _numpy_ef(g, r, k):
    acc = g + r
    idx = np.argpartition(np.abs(acc), acc.size - k)[acc.size - k:]
    vals = acc[idx]
    r[...] = acc
    r[idx] = 0
    return idx, vals


def _cases(K, xp, impl, x, res, idx, val, t, k, s, n, nb):
    """(op, fn, setup, useful bytes) of our kernels; fn closes over scratch."""
    g, r = x, xp.empty_like(res)
    d = xp.zeros(n, x.dtype)
    buf = K.pack(idx, val, impl=impl)
    kb = max(1, k // nb)                  # per block
    blocks = [("topk_abs_blocks", lambda: K.topk_abs_blocks(x, nb, kb, impl=impl), None,
               n * s)] if n % nb == 0 else []
    return [
        ("topk_abs", lambda: K.topk_abs(x, k, impl=impl), None, n * s)] + blocks + [
        ("threshold_select", lambda: K.threshold_select(x, t, impl=impl), None, n * s),
        ("ef_select", lambda: K.ef_select(g, r, k, impl=impl), lambda: r.__setitem__(
            Ellipsis, res), 3 * n * s),
        ("scatter_add", lambda: K.scatter_add(d, idx, val, impl=impl), None, k * (4 + 3 * s)),
        ("pack", lambda: K.pack(idx, val, impl=impl), None, 2 * k * (4 + s)),
        ("unpack", lambda: K.unpack(buf, k, x.dtype, impl=impl), None, 2 * k * (4 + s)),
        ("mix", lambda: K.mix(d, x, 0.5, impl=impl), None, 3 * n * s),
        ("momentum_step", lambda: K.momentum_step(d, x, r, 0.01, 0.9, impl=impl),
         lambda: r.__setitem__(Ellipsis, res), 5 * n * s),
    ]


def _rows_argpartition(xp, x, k, nb):
    # top-k/nb of each row of the (nb, n/nb) view, along the rows
    rows = xp.abs(x.reshape(nb, -1))
    return xp.argpartition(rows, rows.shape[1] - max(1, k // nb), axis=1)


def _cpu_baselines(K, x, res, idx, val, t, k, n, nb):
    from mpidsgd.kernels import packing
    r, d, o = np.empty_like(res), np.zeros(n, x.dtype), x.copy()
    buf = packing.pack_numpy(idx, val)
    keep = lambda: r.__setitem__(Ellipsis, res)       # noqa: E731
    return {
        "topk_abs": [("np.argpartition", lambda: np.argpartition(np.abs(x), n - k), None)],
        "topk_abs_blocks": [("np.argpartition", lambda: _rows_argpartition(np, x, k, nb), None)],
        "threshold_select": [("numpy", lambda: x[np.flatnonzero(np.abs(x) >= t)], None)],
        "ef_select": [("numpy", lambda: _numpy_ef(x, r, k), keep)],
        "scatter_add": [("np.add.at", lambda: np.add.at(d, idx, val), None)],
        "pack": [("numpy", lambda: packing.pack_numpy(idx, val), None)],
        "unpack": [("numpy", lambda: packing.unpack_numpy(buf, k, x.dtype), None)],
        "mix": [("numpy", lambda: o.__iadd__(0.5 * (x - o)), None)],
        "momentum_step": [("numpy", lambda: _numpy_momentum(o, x, r, 0.01, 0.9), keep)],
    }


def _numpy_momentum(p, g, v, lr, mu):
    f = p.dtype.type
    v *= f(mu)
    v += g
    p -= f(lr) * v


def _gpu_baselines(cp, x, res, idx, val, t, k, n, nb):
    import cupyx
    r, d, o = cp.empty_like(res), cp.zeros(n, x.dtype), x.copy()
    keep = lambda: r.__setitem__(Ellipsis, res)       # noqa: E731

    def ef():
        acc = x + r
        sel = cp.argpartition(cp.abs(acc), n - k)[n - k:]
        vals = acc[sel]
        r[...] = acc
        r[sel] = 0
        return sel, vals
    return {
        "topk_abs": [("cupy.argpartition", lambda: cp.argpartition(cp.abs(x), n - k), None),
                     ("cupy.argsort", lambda: cp.argsort(cp.abs(x)), None)],
        "topk_abs_blocks": [("cupy.argpartition", lambda: _rows_argpartition(cp, x, k, nb),
                             None)],
        "threshold_select": [("cupy", lambda: x[cp.flatnonzero(cp.abs(x) >= t)], None)],
        "ef_select": [("cupy", ef, keep)],
        "scatter_add": [("cupyx.scatter_add", lambda: cupyx.scatter_add(d, idx, val), None)],
        "mix": [("cupy", lambda: o.__iadd__(0.5 * (x - o)), None)],
        "momentum_step": [("cupy", lambda: _numpy_momentum(o, x, r, 0.01, 0.9), keep)],
    }


# ---------------------------------------------------------------- driver

def _bench_size(K, table, xp, device, n, args, threads, sync):
    k = max(1, int(round(args.density * n)))
    x, res, idx, val, t = _inputs(xp, n, k, args.dtype)
    s = x.dtype.itemsize
    y = xp.empty_like(x)
    read = median_ms(lambda: x.max(), args.reps, sync=sync)
    one = 1 if device == "cpu" else None              # NumPy: one thread
    table.add("read pass", "x.max()", one, n, k, read, read, n * s, None)
    copy = median_ms(lambda: xp.copyto(y, x), args.reps, sync=sync)
    table.add("copy", "copyto", one, n, k, copy, read, 2 * n * s, None)
    impl = "cpu" if device == "cpu" else "cuda"
    nb = max(1, args.blocks)
    cases = _cases(K, xp, impl, x, res, idx, val, t, k, s, n, nb)
    if device == "cpu":
        bases = _cpu_baselines(K, x, res, idx, val, t, k, n, nb)
    else:
        bases = _gpu_baselines(xp, x, res, idx, val, t, k, n, nb)
    base_ms = {}
    for op, fn, setup, nbytes in cases:       # baselines: once per size
        for name, bfn, bsetup in bases.get(op, []):
            ms = median_ms(bfn, max(3, args.reps // 3), bsetup, sync)
            base_ms.setdefault(op, ms)
            table.add(op, name, one, n, k, ms, read, nbytes, base_ms[op])
    for nth in threads:
        if nth is not None:
            import numba
            numba.set_num_threads(nth)
        for op, fn, setup, nbytes in cases:
            ms = median_ms(fn, args.reps, setup, sync)
            table.add(op, impl, nth, n, k, ms, read, nbytes, base_ms.get(op))


def cpu_name():
    """The CPU model from /proc/cpuinfo (the machine line of a report)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args):
    import mpidsgd.kernels as K
    if args.device == "cuda":
        import cupy as xp
        sync = xp.cuda.Device().synchronize
        threads = [None]
        where = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    else:
        import numba
        xp, sync = np, (lambda: None)
        most = numba.config.NUMBA_NUM_THREADS
        threads = [t for t in (args.threads or sorted({1, most})) if 1 <= t <= most]
        where = f"{cpu_name()}, {os.cpu_count()} cores, Numba {numba.__version__}"
    table = Table(args.device, args.dtype)
    for n in args.n:
        _bench_size(K, table, xp, args.device, n, args, threads, sync)
    load = os.getloadavg()
    print(f"kernels: {where}; dtype {args.dtype}, density {args.density}, "
          f"median of {args.reps}; load average {load[0]:.2f} {load[1]:.2f}")
    table.print()
    if args.json:
        with open(args.json, "w") as fh:
            for r in table.records:
                fh.write(json.dumps(r) + "\n")
    return 0
