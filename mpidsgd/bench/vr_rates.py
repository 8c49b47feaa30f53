"""`python -m mpidsgd.bench vr-rates runs/bench/x.json ...`: gradient
evaluations per sample to a relative gradient norm of 1e-6 / 1e-10 for the
variance-reduced runs of a `bench train --json` file (jobs/bench/centralvr_rates.toml)."""
from __future__ import annotations


def rates_table(records, targets=(1e-6, 1e-10)) -> str:
    """Markdown table from `bench train --json` records of VR runs: gradient
    evaluations per sample (and epochs) until the relative full-gradient norm
    first falls to each target, read from summary.json's rel_grad_norm_history."""
    head = " | ".join(f"evals (epochs) to {t:g}" for t in targets)
    lines = [f"| P | run | {head} | final rel. norm |", "|---" * (3 + len(targets)) + "|"]
    for r in records:
        s = r["summary"]
        hist = s.get("rel_grad_norm_history") or []
        N = s["samples_processed"] / s["grad_evals_per_sample"]
        cells = []
        for t in targets:
            hit = next(((e, smp) for e, smp, rel in hist if rel <= t), None)
            if hit is None:
                cells.append("-")
                continue
            # rank 0's samples x ranks / N (equal shards, e.g. data.samples_per_rank)
            evals = hit[1] * s["world_size"] / N
            cells.append(f"{evals:.1f} ({hit[0]})")
        lines.append(f"| {s['world_size']} | {r['run']} | {' | '.join(cells)} | {s['final_rel_grad_norm']:.2g} |")
    return "\n".join(lines)


def best_runs(records, target=1e-10):
    """Per (P, method): the run (step) that first reaches `target`, else the
    one with the smallest final relative norm."""
    best = {}
    for r in records:
        s = r["summary"]
        key = (s["world_size"], r["run"].split(" lr=")[0])
        hist = s.get("rel_grad_norm_history") or []
        hit = next((smp for _, smp, rel in hist if rel <= target), None)
        score = (0, hit) if hit is not None else (1, s["final_rel_grad_norm"])
        if key not in best or score < best[key][0]:
            best[key] = (score, r)
    return [r for _, r in best.values()]


def plot(records, path):
    """Relative gradient norm (log) against gradient evaluations per sample,
    the best step of every (P, method). Needs the plot extra."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    # colour = method, line style = P
    runs = sorted(best_runs(records), key=lambda r: (r["run"].split(" lr=")[0], r["summary"]["world_size"]))
    methods = sorted({r["run"].split(" lr=")[0] for r in runs})
    sizes = sorted({r["summary"]["world_size"] for r in runs})
    styles = ["-", "--", ":", "-."]
    for r in runs:
        s = r["summary"]
        N = s["samples_processed"] / s["grad_evals_per_sample"]
        hist = s.get("rel_grad_norm_history") or []
        x = [smp * s["world_size"] / N for _, smp, _ in hist]
        y = [rel for _, _, rel in hist]
        ax.semilogy(x, y, marker=".", markersize=3, color=f"C{methods.index(r['run'].split(' lr=')[0]) % 10}",
                    linestyle=styles[sizes.index(s["world_size"]) % len(styles)],
                    label=f"P={s['world_size']} {r['run']}")
    ax.set_xlabel("gradient evaluations per sample")
    ax.set_ylabel("||grad f(x)|| / ||grad f(x0)||")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def register(sub):
    p = sub.add_parser("vr-rates", help="gradient evaluations to a relative gradient norm, "
                                        "from `bench train --json` files of VR runs",
                       description=__doc__)
    p.add_argument("json", nargs="+", help="bench train --json files")
    p.add_argument("--plot", help="also write the convergence plot (best step per P and method)")
    p.set_defaults(func=run)


def run(args):
    """One table per file, then the plot of all of them."""
    import json
    records = []
    for path in args.json:
        with open(path) as fh:
            recs = json.load(fh)
        records += recs
        print(rates_table(recs))
    if args.plot:
        plot(records, args.plot)
