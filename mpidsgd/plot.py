"""`python -m mpidsgd.plot RUN_DIR [RUN_DIR ...] -o FILE.png`: learning curves.

Reads each run folder's metrics.jsonl (and summary.json / config.toml for
the label) and draws, one line per run labelled by its algorithm:

- top row: test accuracy (classification) or test MSE (regression) of the
  eval and final records;
- bottom row: the training loss of the train records;
- columns: against samples processed (over all ranks: rank 0's samples
  times the world size), wall time, and MB sent per rank (phase train).

Needs matplotlib (the `plot` extra). Unusable input is one line
`mpidsgd: error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import tomllib

AXES = (("samples", "samples processed (all ranks)"), ("time_s", "wall time (s)"),
        ("mb", "MB sent per rank"))


class PlotError(ValueError):
    """A run folder that cannot be plotted; the message names it."""


def _records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path) as fh:
            lines = [ln for ln in fh if ln.strip()]
    except OSError as exc:
        raise PlotError(f"{run_dir}: cannot read metrics.jsonl ({exc.strerror})") from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise PlotError(f"{path}: line {i} is not JSON") from None
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _per_step(run_dir):
    """Samples per step of rank 0 times the world size, for records without
    a `samples` field (metrics.jsonl of older runs); 0 when unknown."""
    try:
        with open(os.path.join(run_dir, "config.toml"), "rb") as fh:
            batch = int(tomllib.load(fh)["data"]["batch_size"])
        with open(os.path.join(run_dir, "summary.json")) as fh:
            return batch * int(json.load(fh)["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _label(run_dir):
    """The algorithm of the run (summary.json, else config.toml), else the folder."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as fh:
            return str(json.load(fh)["algorithm"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(os.path.join(run_dir, "config.toml"), "rb") as fh:
            return str(tomllib.load(fh)["algo"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.basename(os.path.normpath(run_dir))


def load_run(run_dir) -> dict:
    """{label, metric, test: {axis: (xs, ys)}, train: {axis: (xs, ys)}} of one run."""
    recs = _records(run_dir)
    evals = [r for r in recs if r.get("kind") in ("eval", "final")]
    metric = "test_accuracy" if any("test_accuracy" in r for r in evals) else "test_mse"
    evals = [r for r in evals if r.get(metric) is not None]
    train = [r for r in recs if r.get("kind") == "train" and r.get("loss") is not None]
    if not evals and not train:
        raise PlotError(f"{run_dir}: metrics.jsonl holds no train or eval records")

    per_step = _per_step(run_dir)

    def series(rows, key):
        return {axis: ([_x(r, axis, per_step) for r in rows], [r[key] for r in rows])
                for axis, _ in AXES}
    return {"label": _label(run_dir), "metric": metric,
            "test": series(evals, metric), "train": series(train, "loss")}


def _x(rec, axis, per_step):
    if axis == "mb":
        return rec.get("bytes_train", 0.0) / 1e6
    if axis == "samples" and "samples" not in rec:
        return rec.get("step", 0) * per_step
    return rec.get(axis, 0)


def draw(runs, out_path):
    """Write the 2 x 3 grid of curves to `out_path` (PNG, PDF or SVG by name)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(AXES), figsize=(5 * len(AXES), 7.5), squeeze=False)
    metrics = {r["metric"] for r in runs}
    ylabel = {"test_accuracy": "test accuracy", "test_mse": "test MSE"}
    for run in runs:
        for col, (axis, xlabel) in enumerate(AXES):
            for row, part in enumerate(("test", "train")):
                xs, ys = run[part][axis]
                if xs:
                    axes[row][col].plot(xs, ys, marker="." if len(xs) < 30 else None,
                                        label=run["label"])
                axes[row][col].set_xlabel(xlabel)
    for col in range(len(AXES)):
        axes[0][col].set_ylabel(" / ".join(ylabel[m] for m in sorted(metrics)))
        axes[1][col].set_ylabel("train loss")
        if all(min(r["train"]["samples"][1], default=1) > 0 for r in runs):
            axes[1][col].set_yscale("log")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _labels_unique(runs, dirs):
    """Two runs of one algorithm: add the folder name to tell them apart."""
    names = [r["label"] for r in runs]
    for r, d in zip(runs, dirs):
        if names.count(r["label"]) > 1:
            r["label"] = f"{r['label']} ({os.path.basename(os.path.normpath(d))})"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m mpidsgd.plot", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (run.out_dir)")
    ap.add_argument("-o", "--out", required=True, metavar="FILE.png", help="image to write")
    args = ap.parse_args(argv)
    try:
        runs = [load_run(d) for d in args.runs]
        _labels_unique(runs, args.runs)
        try:
            import matplotlib
        except ImportError:
            raise PlotError("plotting needs matplotlib: pip install -e \".[plot]\"") from None
        draw(runs, args.out) if matplotlib else None
    except (PlotError, OSError) as exc:
        print(f"mpidsgd: error: {exc}", file=sys.stderr)
        return 2
    print(f"mpidsgd: wrote {args.out} ({len(runs)} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
