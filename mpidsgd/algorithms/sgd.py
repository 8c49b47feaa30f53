"""Dense synchronous SGD: allreduce the mean gradient, then the local optimizer.

Every rank applies the same update to the same parameters, so parameters
stay bit-identical across ranks.
"""
from __future__ import annotations

from ..comm.dense import allreduce_mean
from .base import Algorithm, StepInfo, register


@register
class DenseSGD(Algorithm):
    name = "sgd"

    def __init__(self, *args):
        super().__init__(*args)
        self.opt = self.make_optimizer()

    def step(self, shard) -> StepInfo:
        X, y, _ = shard.next_batch()
        loss = self.compute_grad(self.params, X, y, self.grad)
        allreduce_mean(self.grad, channel=self.channel)
        self.opt.step(self.params, self.grad, self.lr())
        self.step_count += 1
        return StepInfo(loss=loss, samples=int(X.shape[0]))

    def state_dict(self):
        state = super().state_dict()
        state["shared"].update(self.opt.state_dict())
        return state

    def load_state_dict(self, state, reshard=False):
        super().load_state_dict(state, reshard)
        self.opt.load_state_dict(state["shared"])
