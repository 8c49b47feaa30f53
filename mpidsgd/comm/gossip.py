"""Push-sum gossip mailbox: fire-and-forget pushes of (x, alpha) to a peer,
matched-probe receives from any peer, and the NBX drain.

One message = one payload buffer in the parameters' dtype:

    [ x (n values) | alpha (float64 bits) | origin step (int64 bits) | info ]

so x and its push-sum weight can never be separated or re-paired. The weight
travels as the exact 8 bytes of a float64 whatever the dtype of x; `info` is
an optional fixed-length int64 vector the caller piggybacks (gosgd's shared
step budget sends what it knows of every rank's progress).

Sends are `Issend`s from snapshot buffers owned by the mailbox; at most
`max_outstanding` are in flight, and a buffer is reused only after its
request completed. Receives use `Improbe(ANY_SOURCE)` + `Mrecv`, so no other
probe can take a message we saw. MPI only progresses inside MPI calls, so
`poll()` (test sends, receive everything that arrived) must run at least once
per training step.

Termination (NBX, Hoefler et al. 2010): a rank that stops pushing first
completes its own sends while receiving, then posts an `Ibarrier` and keeps
receiving until it completes. An Issend completes only once matched, and
matching happens only inside a receiver's poll, so when the barrier completes
on every rank no message is in flight anywhere and every one was merged.

The mailbox runs on its own communicator (a split of the caller's channel,
sharing its byte counters), so gossip tags never meet other traffic.
"""
from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..backend import is_device_array

TAG = 61                      # the only tag on the mailbox's private communicator
HEADER = np.dtype([("alpha", "<f8"), ("step", "<i8")])
IDLE_S = (5e-5, 2e-3)         # idle back-off, first and longest sleep: waiting
                              # ranks must not steal the cores of ranks that compute


class Backoff:
    """Sleep between polls: short at first, doubling while nothing happens."""

    def __init__(self):
        self.s = IDLE_S[0]

    def __call__(self, progressed: bool):
        if progressed:
            self.s = IDLE_S[0]
        else:
            time.sleep(self.s)
            self.s = min(2 * self.s, IDLE_S[1])


def header_words(dtype, info: int = 0) -> int:
    """Payload words the header (16 bytes + 8 per info value) takes in the
    parameters' dtype."""
    item = np.dtype(dtype).itemsize
    return -(-(HEADER.itemsize + 8 * info) // item)


class Mailbox:
    """Point-to-point push-sum traffic of one rank.

    `merge(x_s, alpha_s, step_s, source[, info])` is the receiver's callback
    (info only when the mailbox carries it); `x_s` is a host view valid only
    during the call.
    """

    def __init__(self, channel, n: int, dtype, *, max_outstanding: int = 1, backend=None,
                 info: int = 0):
        self.chan = channel.split(0)          # private communicator, shared counters
        self.rank, self.size = self.chan.rank, self.chan.size
        self.backend = backend or channel.backend
        self.n, self.dtype = int(n), np.dtype(dtype)
        self.info = int(info)
        self.k = header_words(self.dtype, self.info)
        words = self.n + self.k
        # snapshot buffers (pinned on a GPU run): each stays untouched until
        # its Issend completes
        self.slots = [self.backend.host_buffer((words,), self.dtype, slot=("gossip-send", i))
                      for i in range(max_outstanding)]
        self.reqs = [None] * max_outstanding
        self.rbuf = self.backend.host_buffer((words,), self.dtype, slot="gossip-recv")
        self.status = MPI.Status()
        self.sent_to = np.zeros(self.size, np.int64)       # pushes started, by destination
        self.recv_from = np.zeros(self.size, np.int64)     # pushes merged, by source

    # -- sending ----------------------------------------------------------------------
    def test_sends(self) -> int:
        """Complete what can be completed; the number of sends still in flight."""
        busy = 0
        for i, req in enumerate(self.reqs):
            if req is not None:
                if req.Test():
                    self.reqs[i] = None
                else:
                    busy += 1
        return busy

    def free_slot(self):
        """Index of a snapshot buffer not in flight, or None."""
        self.test_sends()
        return next((i for i, r in enumerate(self.reqs) if r is None), None)

    def push(self, x, alpha: float, step: int, dest: int, slot: int, info=None):
        """Snapshot (x, alpha, step, info) into buffer `slot` and start an
        Issend to `dest`."""
        if dest == self.rank or not 0 <= dest < self.size:
            raise ValueError(f"gossip push to invalid rank {dest} from {self.rank}")
        if self.reqs[slot] is not None:
            raise RuntimeError("gossip snapshot buffer reused while its send is in flight")
        buf = self.slots[slot]
        if is_device_array(x):
            self.backend.synchronize()
            buf[:self.n] = self.backend.asnumpy(x)
        else:
            buf[:self.n] = x
        tail = np.array([(alpha, step)], HEADER).tobytes()
        if self.info:
            tail += np.asarray(info, "<i8").reshape(self.info).tobytes()
        buf[self.n:] = np.frombuffer(tail.ljust(self.k * self.dtype.itemsize, b"\0"), self.dtype)
        self.reqs[slot] = self.chan.Issend(buf, dest, TAG)
        self.sent_to[dest] += 1

    def wait_sends(self, merge=None):
        """Until every own send completed; with `merge`, receive meanwhile
        (required whenever peers may be waiting on us)."""
        idle = Backoff()
        while self.test_sends():
            idle(merge is not None and self.poll(merge) > 0)

    # -- receiving --------------------------------------------------------------------
    def _take(self, msg, merge):
        self.chan.Mrecv(msg, self.rbuf)
        src = self.status.Get_source()
        tail = self.rbuf[self.n:].tobytes()
        hdr = np.frombuffer(tail[:HEADER.itemsize], HEADER)[0]
        self.recv_from[src] += 1
        if self.info:
            info = np.frombuffer(tail[HEADER.itemsize:HEADER.itemsize + 8 * self.info], "<i8")
            return merge(self.rbuf[:self.n], float(hdr["alpha"]), int(hdr["step"]), src, info)
        merge(self.rbuf[:self.n], float(hdr["alpha"]), int(hdr["step"]), src)

    def poll(self, merge) -> int:
        """Progress own sends and merge every message that has arrived, in
        arrival order; returns how many were merged."""
        self.test_sends()
        got = 0
        while True:
            msg = self.chan.Improbe(MPI.ANY_SOURCE, TAG, self.status)
            if msg is None:
                return got
            self._take(msg, merge)
            got += 1

    def receive_from(self, source: int, merge):
        """Merge the next message from `source` (waits for it; the
        deterministic mode knows it was sent). MPI keeps messages between
        one pair in order, so this is the oldest unreceived one."""
        idle = Backoff()
        while True:
            self.test_sends()
            msg = self.chan.Improbe(source, TAG, self.status)
            if msg is not None:
                return self._take(msg, merge)
            idle(False)

    # -- termination ------------------------------------------------------------------
    def drain(self, merge, final: bool = False):
        """Collective (NBX): complete own sends while receiving, then an
        Ibarrier while receiving. When it returns on every rank, no message
        is in flight between any two ranks and every one was merged. Callers
        stop pushing first, and must not push again before every rank
        returned (a checkpoint's collective gather ensures that). `final`:
        nobody pushes any more, so check that nothing is left."""
        self.wait_sends(merge)
        barrier = self.chan.Ibarrier()
        idle = Backoff()
        while not barrier.Test():
            idle(self.poll(merge) > 0)
        if final and self.poll(merge):
            raise RuntimeError("gossip drain: a message arrived after the barrier completed")
