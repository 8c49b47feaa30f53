"""`python -m mpidsgd.bench kernels|collectives|train|costmodel`: speed
measurements, and predictions beyond this machine (costmodel).

Each subcommand lives in mpidsgd/benchmarks/<name>.py and exposes
`register(subparsers)`, which adds its parser with `set_defaults(func=run)`.
"""
import argparse
import importlib
import sys

from mpidsgd.threads import POOLS, one_thread_per_rank

# before NumPy/Numba create their thread pools; `bench kernels` is one
# process that measures 1..all Numba threads itself
one_thread_per_rank(POOLS[:-1] if sys.argv[1:2] == ["kernels"] else POOLS)

SUBCOMMANDS = ("kernels", "collectives", "train", "costmodel")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mpidsgd.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"mpidsgd.benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mpidsgd.benchmarks.{name}":
                raise
            continue
        mod.register(sub)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
