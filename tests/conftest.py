"""Test-suite set-up shared by serial runs and the mpiexec jobs of
mpi-pytest's `parallel` marker.

- Every mpiexec that mpi-pytest starts inherits MPIEXEC_TIMEOUT, so an MPI
  test can never hang the suite (MPICH's hydra kills the job after it).
- One Numba thread per rank: eight ranks share two cores.
- Inside an mpiexec job a failing test aborts the whole job at once: the other
  ranks may be waiting in a collective that the failing rank never reaches.
"""
import os
import sys

os.environ.setdefault("MPIEXEC_TIMEOUT", "600")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

IN_MPI_CHILD = "_PYTEST_MPI_CHILD_PROCESS" in os.environ


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if IN_MPI_CHILD and rep.failed and call.when in ("setup", "call"):
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_size() > 1:
            sys.stderr.write(f"\n[rank {MPI.COMM_WORLD.Get_rank()}] {item.nodeid} FAILED:\n"
                             f"{rep.longreprtext}\n")
            sys.stderr.flush()
            MPI.COMM_WORLD.Abort(1)
