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

On a cluster each job of the suite can run as its own task of a job array
(slurm/sweep.sbatch): `--count` prints the number of jobs, `--argv I` prints
the `python -m mpidsgd.train` arguments of job I (one per line) for the
launcher to start, and `--merge` builds the table and JSON from the jobs'
out_dirs without running anything. Job I is the same job in all three, given
the same selection options.
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
    p.add_argument("--table", help="also write the Markdown table here")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--count", action="store_true", help="print the number of jobs and exit")
    what.add_argument("--argv", type=int, metavar="I",
                      help="print job I's mpidsgd.train arguments, one per line, and exit")
    what.add_argument("--merge", action="store_true",
                      help="table and JSON from the jobs' out_dirs (already run)")
    p.set_defaults(func=run)


def load_suite(name):
    path = Path(name)
    if not path.exists():
        path = Path("jobs/bench") / f"{name}.toml"
    with open(path, "rb") as fh:
        return tomllib.load(fh), path


def train_args(base, overrides, out_dir):
    """Arguments of `python -m mpidsgd.train` for one job."""
    argv = ["--config", base] if base else []
    for o in list(overrides) + [f'run.out_dir="{out_dir}"', "run.progress=false"]:
        argv += ["--set", o]
    return argv


def collect(out_dir):
    """(summary, eval records) of a finished run."""
    summary = json.loads(Path(out_dir, "summary.json").read_text())
    records = [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in records if r.get("kind") in ("eval", "final")]


def launch(nprocs, base, overrides, out_dir, timeout):
    """One mpiexec job; returns (summary, eval records, wall seconds)."""
    cmd = ["mpiexec", "-n", str(nprocs), sys.executable, "-m", "mpidsgd.train"]
    cmd += train_args(base, overrides, out_dir)
    env = dict(os.environ, MPIEXEC_TIMEOUT=str(int(timeout)))
    env.setdefault("NUMBA_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 30)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return collect(out_dir) + (wall,)


def to_target(evals, metric, target, mode):
    """(seconds, epochs) of the first evaluation reaching the target, or None."""
    for r in evals:
        v = r.get(metric)
        if v is not None and (v >= target if mode == "max" else v <= target):
            return r["time_s"], r["epoch"]
    return None


def plan(args):
    """The suite's jobs in a fixed order (variant, run, seed), after the
    selection options: dicts with labels, seed, out_dir and overrides."""
    suite, path = load_suite(args.suite)
    s = suite["suite"]
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else s.get("seeds", [0])
    runs = suite["runs"]
    if args.only:
        keep = set(args.only.split(","))
        runs = [r for r in runs if r["label"] in keep]
    variants = suite.get("variants", [{"label": "-", "set": []}])
    if args.variants:
        keep = set(args.variants.split(","))
        variants = [v for v in variants if v["label"] in keep]
    jobs = []
    for var in variants:
        for r in runs:
            for seed in seeds:
                out = Path(args.out, path.stem, _slug(var["label"]), _slug(r["label"]), f"seed{seed}")
                over = list(s.get("set", [])) + list(var.get("set", [])) + list(r.get("set", [])) \
                    + list(args.overrides) + [f"run.seed={seed}"]
                jobs.append({"variant": var["label"], "run": r["label"], "seed": seed,
                             "out": str(out), "set": over})
    return suite, path, jobs


def make_record(name, job, nprocs, summary, evals, metric, target, mode):
    """One row of the suite's records (the JSON), from a finished job."""
    hit = to_target(evals, metric, target, mode) if target is not None else None
    return {
        "suite": name, "variant": job["variant"], "run": job["run"], "seed": job["seed"],
        "P": nprocs, "final": evals[-1].get(metric) if evals else None,
        "wall_s": summary["wall_time_s"], "time_to_target_s": hit and hit[0],
        "epochs_to_target": hit and hit[1], "target": target, "metric": metric,
        "bytes_per_rank": summary["bytes_sent_per_rank"],
        "messages_per_rank": summary["messages_per_rank"],
        "samples_processed": summary["samples_processed"],
        "curve": [(e["time_s"], e["epoch"], e.get(metric)) for e in evals],
        "summary": summary}


def run(args):
    suite, path, jobs = plan(args)
    s = suite["suite"]
    if args.count:
        print(len(jobs))
        return 0
    if args.argv is not None:
        if not 0 <= args.argv < len(jobs):
            print(f"mpidsgd: error: --argv {args.argv}: the selection has jobs 0..{len(jobs) - 1}",
                  file=sys.stderr)
            return 2
        job = jobs[args.argv]
        print("\n".join(train_args(s.get("base"), job["set"], job["out"])))
        return 0
    nprocs = args.np or s.get("nprocs", 4)
    metric, mode, target = s.get("metric", "test_accuracy"), s.get("mode", "max"), s.get("target")
    records = []
    for job in jobs:
        if args.merge:
            missing = [f for f in ("summary.json", "metrics.jsonl")
                       if not Path(job["out"], f).exists()]
            if missing:
                print(f"mpidsgd: error: --merge: {Path(job['out'], missing[0])} is missing "
                      f"(job {len(records)} did not finish)", file=sys.stderr)
                return 2
            summary, evals = collect(job["out"])
            P = summary["world_size"]
        else:
            summary, evals, _ = launch(nprocs, s.get("base"), job["set"], job["out"], args.timeout)
            P = nprocs
        records.append(make_record(path.stem, job, P, summary, evals, metric, target, mode))
        print(f"  {job['variant']:>10} {job['run']:>16} seed {job['seed']}: {metric} "
              f"{records[-1]['final']}, {summary['wall_time_s']:.1f} s", flush=True)
    table = format_table(records, metric, target)
    print("\n" + table)
    if args.table:
        Path(args.table).write_text(table + "\n")
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


def format_table(records, metric, target):
    """The Markdown table: mean over seeds of each (variant, run)."""
    groups = {}
    for r in records:
        groups.setdefault((r["variant"], r["run"]), []).append(r)
    lines = [f"| variant | run | seeds | {metric} | wall s | s to {target} | epochs to {target} "
             f"| MB/rank | messages/rank |", "|---|---|---|---|---|---|---|---|---|"]
    for (var, run), rs in groups.items():
        reached = sum(r["time_to_target_s"] is not None for r in rs)
        lines.append(
            f"| {var} | {run} | {len(rs)} | {_fmt(_mean([r['final'] for r in rs]), '.4g')} "
            f"| {_fmt(_mean([r['wall_s'] for r in rs]), '.1f')} "
            f"| {_fmt(_mean([r['time_to_target_s'] for r in rs]), '.1f')} ({reached}/{len(rs)}) "
            f"| {_fmt(_mean([r['epochs_to_target'] for r in rs]), '.2f')} "
            f"| {_fmt(_mean([r['bytes_per_rank'] for r in rs]) / 1e6, '.2f')} "
            f"| {_fmt(_mean([r['messages_per_rank'] for r in rs]), '.0f')} |")
    return "\n".join(lines)


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
