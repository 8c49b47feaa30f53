"""`gtopk`: synchronous SGD whose gradient allreduce is gTop-k (a tree of
pairwise merges keeping the global top-k, then a broadcast from the root)
with error feedback; a baseline for `spardl` (docs/algorithms/sparse.md).

Same options, step and state as `topka` (algorithms/topka.py); the world
size must be a power of two.
"""
from __future__ import annotations

from ..comm.gtopk import gtopk, is_power_of_two
from ..config import ConfigError
from .base import register
from .topka import TopkA


@register
class GTopk(TopkA):
    name = "gtopk"

    @classmethod
    def check_world(cls, cfg, size):
        if not is_power_of_two(size):
            raise ConfigError(f"algo.name: gtopk needs a power-of-two number of ranks, got {size}")

    def sparse_allreduce(self, grad):
        gtopk(grad, self.residual, self.k, channel=self.channel, out=grad)
