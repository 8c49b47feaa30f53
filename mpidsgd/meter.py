"""The running training loss and the clock of a run (train.py)."""
from __future__ import annotations

import time


class Meter:
    """The running training-loss average between evaluations and the clock:
    per-rank state that a checkpoint carries, so later records are identical."""

    def __init__(self):
        self.loss_acc, self.loss_n = 0.0, 0
        self.t0 = time.perf_counter()

    def add(self, loss):
        self.loss_acc += loss
        self.loss_n += 1

    def mean(self):
        return self.loss_acc / max(self.loss_n, 1)

    def reset(self):
        self.loss_acc, self.loss_n = 0.0, 0

    def state_dict(self):
        return {"loss_acc": float(self.loss_acc), "loss_n": int(self.loss_n),
                "elapsed_s": time.perf_counter() - self.t0}

    def load_state_dict(self, d):
        self.loss_acc, self.loss_n = float(d["loss_acc"]), int(d["loss_n"])
        self.t0 = time.perf_counter() - float(d.get("elapsed_s", 0.0))
