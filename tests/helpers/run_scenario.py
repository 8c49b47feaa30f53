"""Entry point of one MPI scenario launch (see mpi_scenario.py):

    mpiexec -n P python tests/helpers/run_scenario.py path/to/test_x.py:func out.json

Every rank imports the test module and calls func(scratch_dir); rank 0 writes
the returned dict as JSON. An exception on any rank aborts the whole job, so
ranks blocked in a collective never wait for one that died.
"""
import importlib
import json
import os
import sys
import traceback

from mpi4py import MPI


def main(target, out):
    """Call the scenario collectively and write rank 0's observations."""
    path, func = target.rsplit(":", 1)
    sys.path.insert(0, os.path.dirname(path))
    module = importlib.import_module(os.path.splitext(os.path.basename(path))[0])
    obs = getattr(module, func)(os.path.dirname(os.path.abspath(out)))
    # serialise before the barrier: a non-JSON value fails the job, not the test
    text = json.dumps(obs, indent=1, sort_keys=True)
    MPI.COMM_WORLD.Barrier()
    if MPI.COMM_WORLD.rank == 0:
        with open(out + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(out + ".tmp", out)


if __name__ == "__main__":
    try:
        main(*sys.argv[1:3])
    except BaseException:
        sys.stderr.write(f"[rank {MPI.COMM_WORLD.rank}] scenario failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
