"""`python -m mpidsgd.bench kernels|collectives|train|costmodel|torch|vr-rates|async-iters`:
speed measurements, predictions beyond this machine (costmodel), and
reports over their outputs (vr-rates, async-iters).

Each subcommand lives in mpidsgd/bench/<name>.py (torch: torch_ddp.py, so
that no module is named like the package it measures; a hyphen in a
command is an underscore in its module) and exposes `register(subparsers)`,
which adds its parser with `set_defaults(func=run)`.
"""
import argparse
import importlib

SUBCOMMANDS = ("kernels", "collectives", "train", "costmodel", "torch", "vr-rates", "async-iters")
MODULES = {"torch": "torch_ddp"}


def main(argv=None):
    """Parse `argv` (default sys.argv) and run the chosen subcommand; returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m mpidsgd.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        modname = f"mpidsgd.bench.{MODULES.get(name, name.replace('-', '_'))}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
            continue
        mod.register(sub)
    args = parser.parse_args(argv)
    return args.func(args) or 0
