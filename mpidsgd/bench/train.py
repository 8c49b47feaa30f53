"""`python -m mpidsgd.bench train`: end-to-end comparison of algorithms.

A suite (jobs/bench/<name>.toml) lists runs (each a set of --set overrides on
a base job) and optional variants (e.g. network emulation settings). Every
run x variant x seed is launched as its own `mpiexec` job under a timeout;
the table reports the mean over seeds of final quality, wall time, time and
epochs to the target, and bytes/messages per rank. Suite file:

    [suite]
    base = "jobs/quickstart.toml"   # the job every run starts from
    nprocs = 4
    seeds = [0]
    metric = "test_accuracy"        # a key of the eval records in metrics.jsonl
    mode = "max"                    # max: higher is better; min: lower
    target = 0.85
    set = ["run.epochs=3"]          # overrides common to all runs
    [[runs]]
    label = "sgd"
    set = ["algo.name='sgd'"]
    [[variants]]                    # optional
    label = "1 Gb/s"
    set = ["comm.emulate.alpha=5e-5", "comm.emulate.beta=8e-9"]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..config import tomllib


def register(sub):
    p = sub.add_parser("train", help="end-to-end time/epochs to a target, bytes per rank")
    p.add_argument("--suite", required=True, help="suite name (jobs/bench/NAME.toml) or path")
    p.add_argument("--np", type=int, help="ranks (default: the suite's nprocs)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    p.add_argument("--only", help="comma-separated run labels to keep")
    p.add_argument("--variants", help="comma-separated variant labels to keep")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra override for every run")
    p.add_argument("--out", default="runs/bench", help="folder for the runs' outputs")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a metric-vs-time plot here (needs the plot extra)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.set_defaults(func=run)


def load_suite(name):
    path = Path(name)
    if not path.exists():
        path = Path("jobs/bench") / f"{name}.toml"
    with open(path, "rb") as fh:
        return tomllib.load(fh), path


def launch(nprocs, base, overrides, out_dir, timeout):
    """One mpiexec job; returns (summary, eval records, wall seconds)."""
    cmd = ["mpiexec", "-n", str(nprocs), sys.executable, "-m", "mpidsgd.train"]
    if base:
        cmd += ["--config", base]
    for o in list(overrides) + [f'run.out_dir="{out_dir}"', "run.progress=false"]:
        cmd += ["--set", o]
    env = dict(os.environ, MPIEXEC_TIMEOUT=str(int(timeout)))
    env.setdefault("NUMBA_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 30)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    summary = json.loads(Path(out_dir, "summary.json").read_text())
    records = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in records if r.get("kind") in ("eval", "final")], wall


def to_target(evals, metric, target, mode):
    """(seconds, epochs) of the first evaluation reaching the target, or None."""
    for r in evals:
        v = r.get(metric)
        if v is not None and (v >= target if mode == "max" else v <= target):
            return r["time_s"], r["epoch"]
    return None


def run(args):
    suite, path = load_suite(args.suite)
    s = suite["suite"]
    nprocs = args.np or s.get("nprocs", 4)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else s.get("seeds", [0])
    metric, mode, target = s.get("metric", "test_accuracy"), s.get("mode", "max"), s.get("target")
    runs = suite["runs"]
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r["label"] in keep]
    variants = suite.get("variants", [{"label": "-", "set": []}])
    if args.variants:
        keep = set(args.variants.split(","))
        variants = [v for v in variants if v["label"] in keep]
    records = []
    for var in variants:
        for r in runs:
            for seed in seeds:
                out = Path(args.out, path.stem, _slug(var["label"]), _slug(r["label"]), f"seed{seed}")
                over = list(s.get("set", [])) + list(var.get("set", [])) + list(r.get("set", [])) \
                    + list(args.overrides) + [f"run.seed={seed}"]
                summary, evals, wall = launch(nprocs, s.get("base"), over, str(out), args.timeout)
                hit = to_target(evals, metric, target, mode) if target is not None else None
                records.append({
                    "suite": path.stem, "variant": var["label"], "run": r["label"], "seed": seed,
                    "P": nprocs, "final": evals[-1].get(metric) if evals else None,
                    "wall_s": summary["wall_time_s"], "time_to_target_s": hit and hit[0],
                    "epochs_to_target": hit and hit[1], "target": target, "metric": metric,
                    "bytes_per_rank": summary["bytes_sent_per_rank"],
                    "messages_per_rank": summary["messages_per_rank"],
                    "samples_processed": summary["samples_processed"],
                    "curve": [(e["time_s"], e["epoch"], e.get(metric)) for e in evals],
                    "summary": summary})
                print(f"  {var['label']:>10} {r['label']:>16} seed {seed}: {metric} "
                      f"{records[-1]['final']}, {summary['wall_time_s']:.1f} s", flush=True)
    print_table(records, metric, target)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.plot:
        plot(records, metric, args.plot, mode)
    return 0


def _slug(text):
    return "".join(c if c.isalnum() else "_" for c in str(text)).strip("_") or "x"


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_table(records, metric, target):
    groups = {}
    for r in records:
        groups.setdefault((r["variant"], r["run"]), []).append(r)
    print(f"\n| variant | run | seeds | {metric} | wall s | s to {target} | epochs to {target} "
          f"| MB/rank | messages/rank |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (var, run), rs in groups.items():
        reached = sum(r["time_to_target_s"] is not None for r in rs)
        print(f"| {var} | {run} | {len(rs)} | {_fmt(_mean([r['final'] for r in rs]), '.4g')} "
              f"| {_fmt(_mean([r['wall_s'] for r in rs]), '.1f')} "
              f"| {_fmt(_mean([r['time_to_target_s'] for r in rs]), '.1f')} ({reached}/{len(rs)}) "
              f"| {_fmt(_mean([r['epochs_to_target'] for r in rs]), '.2f')} "
              f"| {_fmt(_mean([r['bytes_per_rank'] for r in rs]) / 1e6, '.2f')} "
              f"| {_fmt(_mean([r['messages_per_rank'] for r in rs]), '.0f')} |")


def plot(records, metric, path, mode):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    variants = sorted({r["variant"] for r in records})
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    for ax, var in zip(axes[0], variants):
        for r in records:
            if r["variant"] == var and r["seed"] == records[0]["seed"]:
                ts = [c[0] for c in r["curve"] if c[2] is not None]
                vs = [c[2] for c in r["curve"] if c[2] is not None]
                ax.plot(ts, vs, marker=".", label=r["run"])
        ax.set_title(f"{var}")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel(metric)
        if mode == "min":
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
