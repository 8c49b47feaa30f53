"""Helpers for MPI tests: sub-communicators of several sizes inside one
mpiexec launch, and assertions that fail on every rank at once."""
import numpy as np
from mpi4py import MPI


def sub_comms(sizes, comm=MPI.COMM_WORLD):
    """Yield (size, subcomm) for each size; ranks outside get COMM_NULL and
    skip that round. One launch of max(sizes) ranks tests every size."""
    for k in sizes:
        sub = comm.Split(0 if comm.rank < k else MPI.UNDEFINED, comm.rank)
        yield k, sub
        if sub != MPI.COMM_NULL:
            sub.Free()
        comm.Barrier()


def all_ok(ok, comm=MPI.COMM_WORLD) -> bool:
    """True only if `ok` holds on every rank of comm (collective)."""
    return bool(comm.allreduce(bool(ok), op=MPI.LAND))


def assert_all(ok, msg="", comm=MPI.COMM_WORLD):
    """Collective assert: every rank raises if any rank's `ok` is False."""
    oks = comm.allgather(bool(ok))
    bad = [r for r, o in enumerate(oks) if not o]
    assert not bad, f"failed on ranks {bad}: {msg}"


class FakeDeviceArray:
    """Host memory posing as a GPU array: exposes __cuda_array_interface__ and
    CuPy's get/set, so the staging path runs in CPU-only CI."""

    def __init__(self, host):
        self._h = np.ascontiguousarray(host)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._h.shape, "typestr": self._h.dtype.str,
                "data": (self._h.ctypes.data, False), "version": 3}

    shape = property(lambda self: self._h.shape)
    dtype = property(lambda self: self._h.dtype)
    nbytes = property(lambda self: self._h.nbytes)

    def get(self, out=None):
        if out is None:
            return self._h.copy()
        out[...] = self._h
        return out

    def set(self, host):
        self._h[...] = host
