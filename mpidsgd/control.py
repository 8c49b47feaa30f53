"""Cheap collective agreement on stopping: preemption signals and time limits.

Each step starts a non-blocking MAX-allreduce of this rank's flag and
completes the one started a step earlier, so the agreement costs no blocking
collective per step and every rank stops at the same step boundary.
"""
from __future__ import annotations

import signal
import time

import numpy as np
from mpi4py import MPI

REASONS = {1: "time_limit", 2: "signal"}


class StopAgreement:
    """poll() -> None, or the agreed reason to stop ("signal", "time_limit")."""

    def __init__(self, channel, time_limit_s=0.0, signals=(signal.SIGTERM, signal.SIGUSR1),
                 collective=True):
        self.channel = channel
        # algorithms without a shared step (gossip, asynchronous) decide locally
        self.collective = collective
        self.deadline = time.monotonic() + time_limit_s if time_limit_s > 0 else None
        self.flag = 0
        self.req = None
        self.buf = np.zeros(1, np.int32)
        self.previous = {}
        for sig in signals:
            try:
                self.previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def _on_signal(self, signum, frame):
        self.flag = 2

    def local_flag(self) -> int:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return max(self.flag, 1)
        return self.flag

    def poll(self):
        """Complete the last agreement, start the next; the agreed reason or None."""
        if not self.collective:
            return REASONS.get(self.local_flag())
        agreed = 0
        if self.req is not None:
            self.req.Wait()
            agreed = int(self.buf[0])
        if agreed:
            self.req = None
            return REASONS[agreed]
        self.buf[0] = self.local_flag()
        with self.channel.phase("control"):
            self.req = self.channel.Iallreduce(self.buf, op=MPI.MAX)
        return None

    def close(self):
        """Complete the agreement still in flight and restore signal handlers."""
        if self.req is not None:
            self.req.Wait()
            self.req = None
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
