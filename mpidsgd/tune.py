"""`python -m mpidsgd.tune momentum`: tune asgd's explicit momentum per group count.

The procedure of Mitliagkas, Zhang, Hadjis and Re ("Asynchrony begets
Momentum", 2016), automated. Asynchrony already acts as momentum
mu_S = 1 - 1/M with M compute groups, so the best explicit momentum mu_L
falls as M grows, down to negative values. For each group count the tuner
runs a mu_L x lr grid of short `asgd` jobs (one `mpiexec` each, under a
timeout) with `comm.emulate.compute = "exponential_total"`, gives every run
the same sample budget, and picks the (mu_L, lr) with the lowest training
loss at the end. It reports the best pair per group count and the
staleness-measured implicit momentum mu_S-hat of that group count.

    python -m mpidsgd.tune momentum --config jobs/quickstart.toml --groups 1,2,4,8 \\
        --momentum -0.6,-0.3,0,0.3,0.6,0.9 --lr 0.01,0.05,0.1 --budget-samples 20000 \\
        --json runs/tune/momentum.json --plot runs/tune/momentum.png

A run that fails (non-zero exit, divergence, timeout, no summary) is
reported on its progress line and left out of the choice.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config as C
from .catalog import load_config

# the paper's best mu_L on CIFAR, for the plot and the docs
PAPER_CIFAR = {1: 0.7, 2: 0.6, 4: 0.2, 8: 0.1, 16: -0.675}


@dataclass
class RunSpec:
    """One point of the grid: an asgd job of `groups` groups."""

    groups: int
    momentum: float
    lr: float
    nprocs: int
    steps: int = 0
    overrides: list = field(default_factory=list)
    out_dir: str = ""


def _floats(text, flag):
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise C.ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise C.ConfigError(f"{flag}: no values")
    return vals


def _groups(text):
    vals = _floats(text, "--groups")
    if any(v < 1 or v != int(v) for v in vals):
        raise C.ConfigError(f"--groups: group counts must be integers >= 1, got {text!r}")
    return [int(v) for v in vals]


def plan(args, batch_size):
    """The grid as RunSpecs, in run order (group count, then mu_L, then lr)."""
    per_update = batch_size * args.ranks_per_group     # samples in one server update
    steps = max(1, args.budget_samples // per_update)
    specs = []
    for M in _groups(args.groups):
        for mu in _floats(args.momentum, "--momentum"):
            for lr in _floats(args.lr, "--lr"):
                over = list(args.overrides) + [
                    "algo.name='asgd'", f"algo.groups={M}", f"algo.momentum={mu}",
                    f"algo.lr={lr}", f"run.steps={steps}", "run.epochs=0", "run.eval_every=0",
                    "comm.emulate.compute='exponential_total'",
                    f"comm.emulate.compute_s={args.compute_s}"]
                out = Path(args.out, f"g{M}", f"mu{mu:g}_lr{lr:g}")
                specs.append(RunSpec(M, mu, lr, M * args.ranks_per_group + 1, steps, over,
                                     str(out)))
    return specs


def mpiexec_runner(config, timeout):
    """A runner: launches one spec with mpiexec, returns its summary.json."""
    from .bench.train import launch

    def run(spec):
        summary, _, _ = launch(spec.nprocs, config, spec.overrides, spec.out_dir, timeout)
        return summary
    return run


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def sweep(specs, runner, say=print):
    """Run every spec; one progress line each. Returns one record per spec:
    status "ok" with the figures, or "failed" with the reason."""
    records = []
    for i, spec in enumerate(specs, 1):
        head = (f"[{i}/{len(specs)}] groups {spec.groups}  mu_L {spec.momentum:+g}  "
                f"lr {spec.lr:g}")
        rec = {"groups": spec.groups, "momentum": spec.momentum, "lr": spec.lr,
               "nprocs": spec.nprocs, "out_dir": spec.out_dir}
        t0 = time.perf_counter()
        try:
            summary = runner(spec)
            loss = summary.get("final_train_loss")
            if loss is None or not math.isfinite(float(loss)):
                raise FloatingPointError(f"final training loss {loss}")
            rec.update(status="ok", train_loss=float(loss),
                       implicit_momentum=summary.get("implicit_momentum"),
                       p_tau0=summary.get("p_tau0"), steps=summary.get("steps"),
                       wall_s=summary.get("wall_time_s"))
            say(f"{head}  loss {loss:.4f}  mu_S-hat {_fmt(rec['implicit_momentum'], '.3f')}  "
                f"{time.perf_counter() - t0:.1f} s")
        except Exception as exc:          # noqa: BLE001 - a failed run is skipped, not fatal
            rec.update(status="failed", error=_first_line(exc))
            say(f"{head}  FAILED ({rec['error']}); skipped")
        records.append(rec)
    return records


def best_per_group(records):
    """Per group count: the successful run with the lowest training loss, and
    the mean measured mu_S-hat over that group count's successful runs."""
    table = []
    for M in sorted({r["groups"] for r in records}):
        ok = [r for r in records if r["groups"] == M and r["status"] == "ok"]
        row = {"groups": M, "runs": sum(r["groups"] == M for r in records), "ok": len(ok),
               "best_momentum": None, "best_lr": None, "train_loss": None,
               "implicit_momentum": None, "theory_momentum": 1 - 1 / M,
               "paper_cifar": PAPER_CIFAR.get(M)}
        if ok:
            best = min(ok, key=lambda r: r["train_loss"])
            mus = [r["implicit_momentum"] for r in ok if r.get("implicit_momentum") is not None]
            row.update(best_momentum=best["momentum"], best_lr=best["lr"],
                       train_loss=best["train_loss"],
                       implicit_momentum=sum(mus) / len(mus) if mus else None)
        table.append(row)
    return table


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def format_table(table):
    lines = ["| groups M | best mu_L | best lr | train loss | mu_S-hat (measured) "
             "| 1 - 1/M | paper CIFAR mu_L | runs ok |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['groups']} | {_fmt(r['best_momentum'], '+g')} | "
                     f"{_fmt(r['best_lr'], 'g')} | {_fmt(r['train_loss'], '.4f')} | "
                     f"{_fmt(r['implicit_momentum'], '.3f')} | {r['theory_momentum']:.3f} | "
                     f"{_fmt(r['paper_cifar'], '+g')} | {r['ok']}/{r['runs']} |")
    return "\n".join(lines)


def plot(records, table, path):
    """Left: training loss against mu_L (best lr) per group count. Right:
    best mu_L and measured mu_S-hat against M, beside the paper and 1 - 1/M."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for row in table:
        ok = [r for r in records if r["groups"] == row["groups"] and r["status"] == "ok"]
        mus = sorted({r["momentum"] for r in ok})
        loss = [min(r["train_loss"] for r in ok if r["momentum"] == m) for m in mus]
        a.plot(mus, loss, marker="o", label=f"M = {row['groups']}")
    a.set_xlabel("explicit momentum mu_L")
    a.set_ylabel("training loss after the budget (best lr)")
    a.set_yscale("log")
    a.legend()
    Ms = [r["groups"] for r in table]
    b.plot(Ms, [r["best_momentum"] for r in table], "o-", label="best mu_L (measured)")
    b.plot(Ms, [r["implicit_momentum"] for r in table], "s-", label="mu_S-hat (measured)")
    b.plot(Ms, [r["theory_momentum"] for r in table], "k:", label="1 - 1/M")
    paper = sorted(PAPER_CIFAR.items())
    b.plot([m for m, _ in paper], [v for _, v in paper], "x--", label="best mu_L, paper CIFAR")
    b.set_xscale("log", base=2)
    b.set_xlabel("compute groups M")
    b.set_ylabel("momentum")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def momentum(args, runner=None, say=print):
    """The `momentum` subcommand; returns the exit code."""
    if args.budget_samples < 1 or args.ranks_per_group < 1 or not args.compute_s > 0:
        raise C.ConfigError("--budget-samples, --ranks-per-group and --compute-s must be > 0")
    from .train import QUICKSTART
    base = load_config(args.config, list(args.overrides), base=None if args.config else QUICKSTART)
    specs = plan(args, base.data.batch_size)
    say(f"mpidsgd.tune: {len(specs)} asgd runs of {specs[0].steps} server updates "
        f"({args.budget_samples} samples) each")
    records = sweep(specs, runner or mpiexec_runner(args.config, args.timeout), say)
    table = best_per_group(records)
    say(format_table(table))
    result = {"argv": sys.argv[1:], "config": args.config, "budget_samples": args.budget_samples,
              "ranks_per_group": args.ranks_per_group, "compute_s": args.compute_s,
              "table": table, "runs": records}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot and any(r["ok"] for r in table):
        plot(records, table, args.plot)
    return 0 if any(r["ok"] for r in table) else 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m mpidsgd.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("momentum", help="best explicit momentum and lr of asgd per group count")
    m.add_argument("--config", help="TOML job file (default: the built-in quickstart)")
    m.add_argument("--groups", default="1,2,4,8", help="comma-separated group counts M")
    m.add_argument("--momentum", default="-0.6,-0.3,0,0.3,0.6,0.9", help="mu_L grid")
    m.add_argument("--lr", default="0.01,0.05,0.1", help="learning-rate grid")
    m.add_argument("--budget-samples", type=int, required=True,
                   help="training samples per run (server updates x batch x ranks per group)")
    m.add_argument("--ranks-per-group", type=int, default=1,
                   help="ranks in each group; world size = M x this + 1 (the server)")
    m.add_argument("--compute-s", type=float, default=0.02,
                   help="mean emulated time of one gradient (exponential_total), seconds")
    m.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override for every run (repeatable)")
    m.add_argument("--out", default="runs/tune", help="folder for the runs' outputs")
    m.add_argument("--json", help="write the table and every run here")
    m.add_argument("--plot", help="write the PNG here (needs the plot extra)")
    m.add_argument("--timeout", type=float, default=600, help="seconds per run")
    return p.parse_args(_glue_lists(sys.argv[1:] if argv is None else list(argv)))


def _glue_lists(argv):
    # "--momentum -0.6,-0.3" would read -0.6,... as an option: glue it to its flag
    out, i = [], 0
    while i < len(argv):
        if argv[i] in LIST_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


LIST_FLAGS = ("--groups", "--momentum", "--lr")


def main(argv=None, runner=None, say=print):
    args = parse_args(argv)
    try:
        return momentum(args, runner, say)
    except C.ConfigError as exc:
        print(f"mpidsgd: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
