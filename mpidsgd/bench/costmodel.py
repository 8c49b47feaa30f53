"""`python -m mpidsgd.bench costmodel`: predicted step time of every allreduce
scheme against the number of ranks P, beyond what one machine can measure.

    time(P) = messages * alpha + bytes * beta + compute

Messages and bytes per rank are comm/costmodel's formulas, the same ones the
Channel's counted traffic is checked against at P <= 8 in the tests: dense
ring, dense Rabenseifner, topka, gtopk (critical path), oktopk (its bound, and
its measured entries per selected entry scaled to P: --oktopk-json, the JSON
of `bench collectives`), spardl d = 1 and with teams d = 2^floor(log2(P)/2)
(B-SAG, start value of h), and the sparse lower bound (bandwidth only, with
ceil(log2 P) latencies, no compute). `compute` is calibrated on this machine
(measured once at start-up, single thread, or read from --kernels-json of
`bench kernels`, its fewest-thread rows, add ~ its copy row): sel seconds per gradient entry of one ef_select pass, merge
seconds per sparse entry of scatter_add, add seconds per entry of a dense
x += y, thr seconds per entry of a threshold_select pass. Sparse schemes pay
one selection pass over n (Ok-Topk: a threshold pass, plus an exact top-k
every 32 steps) plus a merge of the entries they receive; dense schemes add
the (P-1)/P n entries they reduce.
--P accepts `8,16,...,1024` (geometric, ratio from the first two values).
"""
from __future__ import annotations

import json
import math

import numpy as np

from ._costmodel_plot import n_label
from .kernels import ints, median_ms

SCHEMES = ("dense-ring", "dense-rabenseifner", "topka", "gtopk", "oktopk-bound",
           "oktopk-measured", "spardl", "spardl-teams", "lower-bound")


def register(sub):
    p = sub.add_parser("costmodel", help="predicted step time per scheme against P (alpha-beta "
                                         "+ measured compute)", description=__doc__)
    p.add_argument("--P", default="8,16,...,1024", help="rank counts (default 8,16,...,1024)")
    p.add_argument("--n", type=ints, default=[2**24, 2**27], help="gradient lengths (2^24 style)")
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--alpha", type=_floats, default=[5e-6, 5e-5], help="seconds per message")
    p.add_argument("--beta", type=_floats, default=[8e-10, 8e-9], help="seconds per byte")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--oktopk-json", help="`bench collectives --json` records with an oktopk row: "
                                         "its measured entries, scaled (else that curve is left out)")
    p.add_argument("--kernels-json", help="`bench kernels --json` records to calibrate compute "
                                          "(default: measure now)")
    p.add_argument("--no-compute", action="store_true", help="alpha-beta only")
    p.add_argument("--plot", metavar="PNG", help="write the figure")
    p.add_argument("--json", metavar="FILE", help="write the predictions, one JSON object a line")
    p.set_defaults(func=run)


def _floats(text):
    return [float(x) for x in text.split(",")]


def expand_p(text):
    """'8,16,...,1024' -> [8, 16, 32, ..., 1024]; plain lists pass through."""
    parts = [x.strip() for x in text.split(",")]
    if "..." not in parts:
        return [int(x) for x in parts]
    i = parts.index("...")
    a, b, last = int(parts[i - 2]), int(parts[i - 1]), int(parts[i + 1])
    out = [int(x) for x in parts[:i]]
    while out[-1] * (b // a) <= last:
        out.append(out[-1] * (b // a))
    return out + [int(x) for x in parts[i + 2:] if int(x) != out[-1]]


# ---------------------------------------------------------------- calibration

def measure_compute(dtype, n=2**22, density=0.01):
    """Seconds per entry: (sel, merge, add), single thread, this machine."""
    from .. import kernels as K
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n).astype(dtype)
    res = np.zeros_like(g)
    k = max(1, int(n * density))
    sel = median_ms(lambda: K.ef_select(g, res, k), 5, setup=lambda: res.fill(0)) / 1e3 / n
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
    val = rng.standard_normal(k).astype(dtype)
    dst = np.zeros(n, dtype)
    merge = median_ms(lambda: K.scatter_add(dst, idx, val), 9) / 1e3 / k
    y = g.copy()
    add = median_ms(lambda: np.add(dst, y, out=dst), 9) / 1e3 / n
    t = float(np.partition(np.abs(g), n - k)[n - k])
    thr = median_ms(lambda: K.threshold_select(g, t), 9) / 1e3 / n
    return {"sel": sel, "merge": merge, "add": add, "thr": thr,
            "source": f"measured now, n={n}, 1 thread"}


def compute_from_kernels(path, dtype):
    """(sel, merge, add) from `bench kernels --json`: the kernels' own rows
    (impl cpu/cuda) at the fewest threads; add ~ the copy row."""
    recs = [json.loads(line) for line in open(path) if line.strip()]
    recs = [r for r in recs if r.get("dtype", dtype) == dtype]

    def per_entry(op, impls, per):
        rows = sorted((r for r in recs if r["op"] == op and r["impl"] in impls),
                      key=lambda r: (r["threads"] or 0, -r["n"]))
        if not rows:
            raise SystemExit(f"mpidsgd: error: --kernels-json {path} has no {op} row")
        r = rows[0]
        return r["ms"] / 1e3 / (r["n"] if per == "n" else r["k"])
    return {"sel": per_entry("ef_select", ("cpu", "cuda"), "n"),
            "merge": per_entry("scatter_add", ("cpu", "cuda"), "k"),
            "add": per_entry("copy", ("copyto",), "n"),
            "thr": per_entry("threshold_select", ("cpu", "cuda"), "n"), "source": f"{path}"}


def oktopk_measured(path):
    """(entries sent per k(P-1)/P, entries gathered per k) of the steady oktopk rows."""
    recs = [json.loads(line) for line in open(path) if line.strip()]
    rows = [r for r in recs if r["scheme"] == "oktopk" and "sent_entries" in r]
    if not rows:
        raise SystemExit(f"mpidsgd: error: --oktopk-json {path} has no oktopk row")
    r = max(rows, key=lambda r: (r["P"], r["n"]))
    k, P = r["k"], r["P"]
    return (r["sent_entries"] / (k * (P - 1) / P), r["gathered_entries"] / k,
            f"{path}: P={P} n={n_label(r['n'])}")


# ---------------------------------------------------------------- predictions

def predict(n, s, P, density, c, okm):
    """{scheme: (messages, bytes, compute seconds)} for one rank count."""
    from ..comm import costmodel as cm
    k = max(1, min(n, math.floor(n * density)))
    red = n * (P - 1) / P
    out = {}
    b, m = cm.dense_ring(n, s, P)
    out["dense-ring"] = (m, b, c["add"] * red)
    b, m = cm.dense_rabenseifner(n, s, P)
    out["dense-rabenseifner"] = (m, b, c["add"] * red)
    b, m = cm.topka(k, s, P)
    out["topka"] = (m, b, c["sel"] * n + c["merge"] * k * P)
    b, m = cm.gtopk_path(k, s, P)
    out["gtopk"] = (m, b, c["sel"] * n + c["merge"] * 2 * k * cm.log2ceil(P))
    # Ok-Topk: a threshold pass per step, an exact top-k every 32 steps
    sel_ok = c["thr"] * n + c["sel"] * n / 32
    b, m = cm.oktopk_bound(k, s, P)
    out["oktopk-bound"] = (m, b, sel_ok + c["merge"] * 2 * k)
    if okm is not None:
        b, m = cm.oktopk_mean(k, s, P, sent_per_k=okm[0], gathered_per_k=okm[1])
        out["oktopk-measured"] = (m, b, sel_ok + c["merge"] * (okm[0] + okm[1]) * k)
    _, k_b = cm.spardl_block(n, P, density)
    b, m = cm.spardl(n, s, P, density)
    out["spardl"] = (m, b, c["sel"] * n + c["merge"] * 2 * k_b * (P - 1))
    d = 2 ** (cm.log2ceil(P) // 2)
    _, k_bt = cm.spardl_block(n, P // d, density)
    b, m = cm.spardl(n, s, P, density, teams=d, sag="bruck")
    out["spardl-teams"] = (m, b, c["sel"] * n + c["merge"] * (2 * k_bt * (P // d - 1)
                                                              + d * max(1, k_bt // d)))
    out["lower-bound"] = (cm.log2ceil(P), cm.sparse_lower_bound(k, s, P), 0.0)
    return out


def run(args):
    Ps = expand_p(args.P)
    s = np.dtype(args.dtype).itemsize
    if args.no_compute:
        c = {"sel": 0.0, "merge": 0.0, "add": 0.0, "thr": 0.0, "source": "none (--no-compute)"}
    elif args.kernels_json:
        c = compute_from_kernels(args.kernels_json, args.dtype)
    else:
        c = measure_compute(args.dtype)
    okm = oktopk_measured(args.oktopk_json) if args.oktopk_json else None
    print(f"costmodel: {args.dtype}, density {args.density}; compute per entry: selection "
          f"{c['sel'] * 1e9:.2f} ns, threshold {c['thr'] * 1e9:.2f} ns, merge {c['merge'] * 1e9:.2f} ns, add {c['add'] * 1e9:.2f} ns "
          f"({c['source']})")
    print("oktopk-measured: " + (f"{okm[0]:.3f} x k(P-1)/P entries sent, {okm[1]:.3f} x k "
                                 f"gathered ({okm[2]})" if okm else "left out (no --oktopk-json)"))
    records = []
    for n in args.n:
        for alpha in args.alpha:
            for beta in args.beta:
                rows = {P: predict(n, s, P, args.density, c, okm) for P in Ps}
                records += _table(n, alpha, beta, rows)
    if args.json:
        with open(args.json, "w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
    if args.plot:
        from ._costmodel_plot import plot
        plot(records, Ps, args, c, okm)
    return 0


def _table(n, alpha, beta, rows):
    """Print one setting's table (ms per step) and its crossovers; return records."""
    names = [x for x in SCHEMES if x in next(iter(rows.values()))]
    print(f"\nn = {n_label(n)}, alpha = {alpha:g} s, beta = {beta:g} s/B  (ms per step)")
    print(f"{'P':>6} " + " ".join(f"{x:>18}" for x in names))
    recs = []
    for P, pred in rows.items():
        ms = {x: 1e3 * (pred[x][0] * alpha + pred[x][1] * beta + pred[x][2]) for x in names}
        print(f"{P:>6} " + " ".join(f"{ms[x]:>18.3f}" for x in names))
        recs += [dict(n=n, alpha=alpha, beta=beta, P=P, scheme=x, ms=ms[x], messages=pred[x][0],
                      bytes=pred[x][1], compute_s=pred[x][2]) for x in names]
    for ok in ("oktopk-bound", "oktopk-measured"):
        if ok in names:
            print(f"  spardl vs {ok}: {crossover(recs, 'spardl', ok)}")
    print(f"  spardl vs dense-rabenseifner: {crossover(recs, 'spardl', 'dense-rabenseifner')}")
    return recs


def crossover(recs, a, b):
    """Where scheme a is faster than b, in words."""
    ms = {}
    for r in recs:
        ms.setdefault(r["P"], {})[r["scheme"]] = r["ms"]
    wins = [P for P in sorted(ms) if ms[P][a] < ms[P][b]]
    if not wins:
        return f"{a} slower at every P"
    if len(wins) == len(ms):
        return f"{a} faster at every P"
    return f"{a} faster at P in {wins}"
