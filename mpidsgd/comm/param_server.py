"""Parameter-server traffic: one server rank, many client ranks (group leaders).

A message is one buffer in the parameters' dtype:

    [ payload (n values, may be absent) | header: HEADER_VALUES float64 ]

The header travels as the exact bytes of float64 values whatever the dtype
(versions and counts below 2**53 are exact). Kinds are tags:

    PUSH     payload + header; the server applies it and, if the algorithm
             says so, answers with a REPLY
    READ     header only; the server answers with a REPLY (its state)
    QUIESCE  header only; the client has nothing in flight until the agreed
             quiescent point is over
    BYE      header only; the client sends nothing more, ever (explicit end)

The server receives with matched probes on ANY_SOURCE (`Improbe` + `Mrecv`),
so a message it saw can be received by nobody else and is received into a
buffer of the right size. It never blocks sending: replies are `Isend`s from
a buffer owned per client, completed before that client's next reply (the
client received the previous one before it could ask again) and at every
quiescent point. Clients wait for replies with `Irecv` + tests and an idle
back-off, so waiting ranks leave the cores to ranks that compute.

Nothing is in flight once the server has counted a QUIESCE (or BYE) from every
client and completed its replies: each client sends its marker only after it
has received every reply it asked for, and messages from one client arrive in
the order sent. All traffic is booked by the Channel under its current phase.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

from .gossip import Backoff

PUSH, READ, QUIESCE, BYE, REPLY = 0x7A1, 0x7A2, 0x7A3, 0x7A4, 0x7A5
KINDS = {PUSH: "push", READ: "read", QUIESCE: "quiesce", BYE: "bye"}
HEADER_VALUES = 4       # [version, loss, samples, flag]


def header_words(dtype) -> int:
    """Words of `dtype` that HEADER_VALUES float64 values take."""
    return -(-HEADER_VALUES * 8 // np.dtype(dtype).itemsize)


class Message:
    """A host buffer [payload | header] with typed views of both parts."""

    def __init__(self, n: int, dtype):
        self.n, self.dtype = int(n), np.dtype(dtype)
        self.k = header_words(self.dtype)
        self.buf = np.zeros(self.n + self.k, self.dtype)

    @property
    def payload(self):
        return self.buf[:self.n]

    def set_header(self, version=0, loss=0.0, samples=0, flag=0):
        h = np.zeros(self.k * self.dtype.itemsize // 8, np.float64)
        h[:HEADER_VALUES] = (version, loss, samples, flag)
        self.buf[self.n:] = h.view(self.dtype)

    def header(self, buf=None):
        """(version, loss, samples, flag) of `buf` (default: own buffer)."""
        b = self.buf if buf is None else buf
        h = np.ascontiguousarray(b[-self.k:]).view(np.float64)
        return int(h[0]), float(h[1]), int(h[2]), int(h[3])

    def header_only(self):
        return self.buf[self.n:]


class Client:
    """A client's side: push, read, markers. Blocking only while it waits for
    its own reply (with back-off), never on the server's other clients."""

    def __init__(self, channel, n: int, dtype, server: int = 0):
        self.chan, self.server = channel, int(server)
        self.out = Message(n, dtype)
        self.reply = Message(n, dtype)
        self.sent = self.received = self.pushes = 0

    def _wait_reply(self):
        req = self.chan.Irecv(self.reply.buf, source=self.server, tag=REPLY)
        return req

    def _finish(self, req):
        wait = Backoff()
        while not req.Test():
            wait(False)
        self.received += 1
        return self.reply

    def push(self, want_reply=True):
        """Send self.out (payload and header set by the caller) as a PUSH;
        with `want_reply` wait for the answer in self.reply."""
        req = self._wait_reply() if want_reply else None
        self.chan.Send(self.out.buf, self.server, PUSH)
        self.sent += 1
        self.pushes += 1
        return self._finish(req) if want_reply else None

    def read(self):
        """Ask for the server's state; the answer lands in self.reply."""
        req = self._wait_reply()
        self._marker(READ)
        return self._finish(req)

    def _marker(self, tag, version=0, flag=0):
        self.out.set_header(version=version, flag=flag)
        self.chan.Send(self.out.header_only(), self.server, tag)
        self.sent += 1

    def quiesce(self):
        self._marker(QUIESCE)

    def bye(self):
        self._marker(BYE)


class Server:
    """The server's side: `poll(handle)` receives one message if one is there.

    `handle(kind, source, msg_buf)` applies it and returns the buffer to send
    back (a REPLY) or None. The caller owns the counting of kinds.
    """

    def __init__(self, channel, n: int, dtype):
        self.chan = channel
        self.inbox = Message(n, dtype)
        self.small = np.zeros(self.inbox.k, self.inbox.dtype)
        self.pending = {}           # client -> (request, buffer) of its last reply
        self.idle = Backoff()
        self.sent = self.received = 0

    def poll(self, handle, block=False):
        """Handle at most one message; (kind, source) or None when none came
        (after a short idle sleep). `block`: keep probing until one comes."""
        status = MPI.Status()
        while True:
            msg = self.chan.Improbe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            if msg is not None:
                break
            self.idle(False)
            if not block:
                return None
        self.idle(True)
        tag, src = status.Get_tag(), status.Get_source()
        if tag not in KINDS:
            raise RuntimeError(f"parameter server: unexpected tag {tag} from rank {src}")
        buf = self.inbox.buf if tag == PUSH else self.small
        self.chan.Mrecv(msg, buf)
        self.received += 1
        answer = handle(KINDS[tag], src, buf)
        if answer is not None:
            self.reply(answer, src)
        return KINDS[tag], src

    def reply(self, data, dest):
        """Isend `data` (copied) to `dest`; its previous reply completes first."""
        req_buf = self.pending.pop(dest, None)
        if req_buf is not None:
            req_buf[0].Wait()
            buf = req_buf[1]
        else:
            buf = np.empty_like(self.inbox.buf)
        buf[...] = data
        self.pending[dest] = (self.chan.Isend(buf, dest, REPLY), buf)
        self.sent += 1

    def complete(self):
        """Complete every reply sent (each client is receiving it)."""
        for req, _ in self.pending.values():
            req.Wait()

    def header(self, buf):
        return self.inbox.header(buf)
