"""Topology: the one object that knows ranks, nodes and sub-communicators.

Built once in train.py and passed everywhere; nothing else asks MPI who it is.
"""
from __future__ import annotations

from mpi4py import MPI


class Topology:
    """World communicator (a Dup, so library traffic never meets user tags),
    rank, size, node-local rank and helpers for sub-communicators."""

    def __init__(self, comm=None):
        base = MPI.COMM_WORLD if comm is None else comm
        self.world = base.Dup()
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        # ranks sharing a node: their count and our place among them bind GPUs
        self.shared = self.world.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = self.shared.Get_rank()
        self.local_size = self.shared.Get_size()
        # node index = rank of this node's leader among all leaders
        leaders = self.world.Split(0 if self.local_rank == 0 else MPI.UNDEFINED, self.rank)
        node = leaders.Get_rank() if leaders != MPI.COMM_NULL else 0
        self.n_nodes = leaders.Get_size() if leaders != MPI.COMM_NULL else 0
        if leaders != MPI.COMM_NULL:
            leaders.Free()
        self.node = self.shared.bcast(node, root=0)
        self.n_nodes = self.shared.bcast(self.n_nodes, root=0)

    @property
    def is_root(self) -> bool:
        """True on the one rank that prints and writes shared files."""
        return self.rank == 0

    def split(self, color, key=None):
        """A sub-communicator of the world (MPI.UNDEFINED color -> COMM_NULL)."""
        return self.world.Split(color, self.rank if key is None else key)

    def teams(self, d: int):
        """SparDL teams: `d` contiguous rank ranges of P/d ranks each.

        Returns (team_comm, group_comm): the ranks of this rank's team, and the
        d ranks that share this rank's position inside their teams.
        """
        if d < 1 or self.size % d:
            raise ValueError(f"algo.teams = {d} must divide the world size {self.size}")
        per_team = self.size // d
        team = self.split(self.rank // per_team)
        group = self.split(self.rank % per_team)
        return team, group

    def free(self):
        for comm in (self.shared, self.world):
            if comm != MPI.COMM_NULL:
                comm.Free()
