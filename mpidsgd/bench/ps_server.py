"""Parameter-server load: `mpiexec -n P python -m mpidsgd.bench.ps_server [train args]`.

Runs `python -m mpidsgd.train` with the given arguments (an asgd or easgd
job) and times, on the server (rank 0), every poll that handled a message:
matched receive, the update and the reply's start. It prints one line:

    ps_server: U updates in W s = R updates/s; server busy B s (F of the wall), T ms per update

and writes the same figures to <run.out_dir>/ps_server.json. The busy time
per update T bounds what one server can take: about 1/T updates per second
however many groups push to it. When the busy fraction nears 1, more
groups only queue at the server; put more ranks into each group instead
(fewer, larger pushes).
"""
from __future__ import annotations

import json
import os
import sys
import time

from ..threads import one_thread_per_rank

one_thread_per_rank()

from ..comm import param_server  # noqa: E402

BUSY = {"s": 0.0, "n": 0, "first": None, "last": None}


def _timed(poll):
    def wrapper(self, handle, block=False):
        t0 = time.perf_counter()
        got = poll(self, handle, block=block)
        if got is not None and not block:
            # a non-blocking poll that found a message never slept
            t1 = time.perf_counter()
            BUSY["s"] += t1 - t0
            if got[0] == "push":
                BUSY["n"] += 1
                BUSY["first"] = BUSY["first"] or t0
                BUSY["last"] = t1
        return got
    return wrapper


def report(out_dir):
    """One line and ps_server.json (rank 0 only)."""
    if not BUSY["n"]:
        return
    wall = BUSY["last"] - BUSY["first"]
    res = {"updates": BUSY["n"], "wall_s": wall, "updates_per_s": BUSY["n"] / wall,
           "busy_s": BUSY["s"], "busy_fraction": BUSY["s"] / wall,
           "busy_ms_per_update": 1e3 * BUSY["s"] / BUSY["n"]}
    print(f"ps_server: {res['updates']} updates in {wall:.2f} s = {res['updates_per_s']:.0f} "
          f"updates/s; server busy {res['busy_s']:.2f} s ({res['busy_fraction']:.2f} of the "
          f"wall), {res['busy_ms_per_update']:.3f} ms per update", flush=True)
    with open(os.path.join(out_dir, "ps_server.json"), "w") as fh:
        json.dump(res, fh, indent=1)


def main(argv=None):
    from .. import train
    from ..catalog import load_config
    param_server.Server.poll = _timed(param_server.Server.poll)
    argv = sys.argv[1:] if argv is None else argv
    rc = train.main(argv)
    from mpi4py import MPI
    if MPI.COMM_WORLD.rank == 0 and rc in (0, None):
        args = train.parse_args(argv)
        cfg = load_config(args.config, args.overrides,
                           base=None if args.config else train.QUICKSTART)
        report(cfg.run.out_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
