"""Topology: the one object that knows ranks, nodes and sub-communicators.

Built once in train.py and passed everywhere; nothing else asks MPI who it is.
"""
from __future__ import annotations

from mpi4py import MPI


class Topology:
    """World communicator (a Dup, so library traffic never meets user tags),
    rank, size, node-local rank, and sub-communicators split from the world."""

    def __init__(self, comm=None):
        base = MPI.COMM_WORLD if comm is None else comm
        self.world = base.Dup()
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        # ranks sharing a node: our place among them binds the GPU
        self.shared = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.shared.Get_rank()

    @property
    def is_root(self) -> bool:
        """True on the one rank that prints and writes shared files."""
        return self.rank == 0

    def split(self, color, key=None):
        """A sub-communicator of the world (MPI.UNDEFINED color -> COMM_NULL)."""
        return self.world.Split(color, self.rank if key is None else key)

    def free(self):
        for comm in (self.shared, self.world):
            if comm != MPI.COMM_NULL:
                comm.Free()
