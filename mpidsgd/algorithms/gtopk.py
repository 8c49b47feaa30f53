"""`gtopk`: synchronous SGD whose gradient allreduce is gTop-k (a tree of
pairwise merges keeping the global top-k, then a broadcast from the root)
with error feedback; a baseline for `spardl` (docs/algorithms/sparse.md).

Same options, step and state as `topka` (algorithms/topka.py); the world
size must be a power of two.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..comm.gtopk import gtopk, is_power_of_two
from ..config import ConfigError
from .base import register
from .topka import SparseOptions, TopkA


@dataclass
class GTopkOptions(SparseOptions):
    def validate(self, cfg, world_size=None):
        super().validate(cfg, world_size)
        if world_size is not None and not is_power_of_two(world_size):
            raise ConfigError(f"algo.name: gtopk needs a power-of-two number of ranks, got {world_size}")


@register
class GTopk(TopkA):
    name = "gtopk"
    Options = GTopkOptions

    def sparse_allreduce(self, grad):
        gtopk(grad, self.residual, self.k, channel=self.channel, out=grad)
