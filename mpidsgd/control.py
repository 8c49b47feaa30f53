"""Cheap collective agreement on stopping and checkpointing: preemption
signals (SIGTERM, SIGUSR1), time limits, and for asynchronous algorithms the
checkpoint requests of rank 0.

Every poll completes the non-blocking allreduce ("round") started by the
previous poll and starts the next one, so agreeing costs no blocking
collective per step.

Synchronous algorithms (every rank runs the same steps): poll() waits for the
round started one step earlier (already finished in practice), so every rank
sees the same verdict at the same step boundary. Checkpoint steps need no
agreement there: every rank knows the step count.

Asynchronous algorithms (ranks at different step counts): rounds run on a
private communicator and poll() only *tests* the previous round, so fast ranks
never wait for slow ones. Rounds are matched in order, so every rank acts on
the same round's verdict, at its own step count: a checkpoint request (rank 0
asks every `checkpoint.every` of its steps), a signal or the time limit. The
verdict is an OR of bit flags; a rank that leaves the loop first completes its
pending round (acting on it with the others) and then contributes LEFT, after
which nobody acts on any verdict again, since a collective action (quiesce,
checkpoint) would wait for the rank that left. What the train loop does on a
verdict: algo.quiesce() on every rank (no message in flight), then the
checkpoint, then go on or stop.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

TIME_LIMIT, SIGNAL, CHECKPOINT, LEFT = 1, 2, 4, 8


def reason_of(flags: int):
    """"signal" before "time_limit" when both are set; None when neither."""
    if flags & SIGNAL:
        return "signal"
    if flags & TIME_LIMIT:
        return "time_limit"
    return None


@dataclass
class Decision:
    """What every rank agreed on at this poll."""

    stop: str | None = None      # "signal" | "time_limit" | None
    checkpoint: bool = False     # asynchronous algorithms: quiesce and checkpoint now

    def __bool__(self):
        return bool(self.stop) or self.checkpoint


class StopAgreement:
    """poll() -> Decision; see the module doc for the two modes."""

    def __init__(self, channel, time_limit_s=0.0, signals=(signal.SIGTERM, signal.SIGUSR1),
                 collective=True):
        self.main = channel
        self.synchronous = collective
        # asynchronous rounds are started at different points on different
        # ranks: a private communicator keeps them apart from the algorithm's
        self.channel = channel if collective else channel.split(0)
        self.deadline = time.monotonic() + time_limit_s if time_limit_s > 0 else None
        self.flag = 0
        self.req = None
        self.buf = np.zeros(1, np.int32)
        self.rounds = 0              # rounds started by this rank
        self.someone_left = False    # a verdict carried LEFT: act on nothing more
        self.previous = {}
        for sig in signals:
            try:
                self.previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def _on_signal(self, signum, frame):
        self.flag |= SIGNAL

    def local_flag(self) -> int:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return self.flag | TIME_LIMIT
        return self.flag

    def _start(self, flags):
        self.buf[0] = flags
        with self.channel.phase("control"):
            self.req = self.channel.Iallreduce(self.buf, op=MPI.BOR)
        self.rounds += 1

    def poll(self, *, leaving=False, want_checkpoint=False) -> Decision:
        """Complete the last round and start the next; the agreed Decision.

        leaving: this rank's algorithm is done and it leaves the loop after
        this poll (asynchronous mode; synchronous ranks leave together).
        want_checkpoint: this rank asks for a checkpoint (asynchronous mode).
        """
        if self.synchronous:
            return self._poll_sync()
        verdict = None
        if self.req is not None:
            if leaving and not self.someone_left:
                self.req.Wait()          # act on this round together with the others
                done = True
            else:
                done = self.req.Test()
            if done:
                verdict, self.req = int(self.buf[0]), None
        decision = Decision()
        if verdict is not None and not self.someone_left:
            if verdict & LEFT:
                self.someone_left = True
            else:
                decision = Decision(reason_of(verdict), bool(verdict & CHECKPOINT))
        if self.req is None:
            # a request just served is not repeated (the caller asked before saving)
            asks = want_checkpoint and not decision.checkpoint
            flags = self.local_flag() | (CHECKPOINT if asks else 0)
            if leaving or decision.stop:
                flags |= LEFT
            self._start(flags)
        return decision

    def _poll_sync(self) -> Decision:
        agreed = 0
        if self.req is not None:
            self.req.Wait()
            agreed, self.req = int(self.buf[0]), None
        if agreed & (SIGNAL | TIME_LIMIT):
            return Decision(reason_of(agreed))
        self._start(self.local_flag())
        return Decision()

    def close(self):
        """Complete every round and restore the signal handlers. Asynchronous
        mode: collective over the main channel (call it after algo.finish(),
        when every rank has left its loop); ranks that started fewer rounds
        start the missing ones, so no request is left pending."""
        if not self.synchronous:
            with self.main.phase("control"):
                most = int(self.main.allreduce_values([self.rounds], op=MPI.MAX)[0])
            while True:
                if self.req is not None:
                    self.req.Wait()
                    self.req = None
                if self.rounds >= most:
                    break
                self._start(LEFT)
        elif self.req is not None:
            self.req.Wait()
            self.req = None
        for sig, prev in self.previous.items():
            signal.signal(sig, prev)
        self.previous = {}
