"""The figure of `bench costmodel`: predicted ms per step against P, one
panel per (n, alpha, beta), log-log, one line per scheme; and the label of
a gradient length that the figure and the tables share."""
from __future__ import annotations

import math

STYLE = {"dense-ring": ("0.5", ":"), "dense-rabenseifner": ("k", ":"),
         "topka": ("tab:purple", "-."), "gtopk": ("tab:brown", "-."),
         "oktopk-bound": ("tab:red", "--"), "oktopk-measured": ("tab:red", "-"),
         "spardl": ("tab:blue", "-"), "spardl-teams": ("tab:cyan", "-"),
         "lower-bound": ("tab:green", ":")}


def n_label(n):
    """2**24 -> '2^24'; a length that is no power of two prints as it is."""
    e = int(round(math.log2(n)))
    return f"2^{e}" if 2**e == n else str(n)


def plot(records, Ps, args, c, okm):
    """Write args.plot (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = sorted({(r["n"], r["alpha"], r["beta"]) for r in records})
    cols = min(4, len(settings))
    rows = -(-len(settings) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (n, a, b) in zip(axes.flat, settings):
        mine = [r for r in records if (r["n"], r["alpha"], r["beta"]) == (n, a, b)]
        for name in STYLE:
            pts = sorted((r["P"], r["ms"]) for r in mine if r["scheme"] == name)
            if pts:
                color, ls = STYLE[name]
                ax.plot(*zip(*pts), ls, color=color, label=name, marker=".", ms=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.axvspan(min(Ps), 8, color="0.9", zorder=0)
        ax.set_title(f"n={n_label(n)}, a={a:g} s, b={b:g} s/B", fontsize=9)
        ax.set_xlabel("ranks P")
        ax.set_ylabel("predicted ms / step")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(settings):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"alpha-beta cost model + measured compute (sel {c['sel'] * 1e9:.2f}, threshold "
                 f"{c['thr'] * 1e9:.2f}, merge {c['merge'] * 1e9:.2f} ns per entry); "
                 f"density {args.density}; "
                 f"shaded: P <= 8, the measured range", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
