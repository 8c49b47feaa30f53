"""`python -m mpidsgd.checkpoint info FILE`: a checkpoint's layout, attributes
and whether every checksum verifies (exit 0 valid, 1 damaged, 2 unreadable).
Needs no MPI."""
from __future__ import annotations

import argparse
import sys

from .format import info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpidsgd.checkpoint",
                                 description="Inspect mpidsgd HDF5 checkpoints.")
    cmd = ap.add_subparsers(dest="cmd", required=True)
    i = cmd.add_parser("info", help="print layout, attributes and whether every checksum verifies")
    i.add_argument("file")
    args = ap.parse_args(argv)
    return info(args.file)


if __name__ == "__main__":
    sys.exit(main())
