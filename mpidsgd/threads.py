"""Threads per rank for the command-line entry points.

MPI jobs run one rank per core (or per GPU). A BLAS or Numba thread pool of
all the node's cores in every rank oversubscribes the node many times over:
OpenBLAS threads spin while they wait, and on the 2-core CI machine four
ranks with default pools train ten times slower than with one thread each.
So `python -m mpidsgd.train` and `python -m mpidsgd.bench` default every
pool to one thread per rank, before NumPy or Numba is imported. A variable
the user set is never touched: give each rank more cores with, e.g.,
`OMP_NUM_THREADS=4 NUMBA_NUM_THREADS=4` (and `srun --cpus-per-task=4`).
"""
import os

POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
         "BLIS_NUM_THREADS", "NUMBA_NUM_THREADS")


def one_thread_per_rank(pools=POOLS) -> dict:
    """Set each unset pool size to 1; returns the variables it set."""
    user = os.environ.get("OMP_NUM_THREADS")
    chosen = {}
    for var in pools:
        if var not in os.environ:
            # OMP_NUM_THREADS, when the user gave it, sizes the other pools too
            os.environ[var] = chosen[var] = user or "1"
    return chosen
