"""Channel: the only place that calls mpi4py send/receive and collectives.

It counts, per phase label (`train`, `eval`, `setup`, ...), the bytes and
messages this rank SENDS: point-to-point exactly, library collectives by the
booking rules of comm/costmodel.py. It stages device buffers through pinned
host memory unless MPI is CUDA-aware, and can emulate a network (alpha seconds
per message, beta seconds per byte, charged as sleep on the booked figures).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from . import costmodel as cm
from ..backend import Backend, is_device_array


@dataclass
class NetworkEmulation:
    """alpha seconds per message + beta seconds per byte, slept after sending."""

    alpha: float = 0.0
    beta: float = 0.0

    @property
    def active(self) -> bool:
        return self.alpha > 0 or self.beta > 0

    def charge(self, nbytes: float, messages: float) -> float:
        t = cm.alpha_beta_time(nbytes, messages, self.alpha, self.beta)
        if t > 0:
            time.sleep(t)
        return t


class Counters:
    """Bytes and messages sent, per phase; shared by a channel and its splits."""

    def __init__(self):
        self.bytes = {}
        self.messages = {}
        self.emulated_s = 0.0

    def add(self, phase, nbytes, messages):
        self.bytes[phase] = self.bytes.get(phase, 0.0) + float(nbytes)
        self.messages[phase] = self.messages.get(phase, 0) + int(messages)

    def snapshot(self):
        return dict(self.bytes), dict(self.messages)

    def state(self):
        """Checkpointable form: phase -> [bytes, messages]."""
        return {p: [self.bytes[p], self.messages.get(p, 0)] for p in self.bytes}

    def load(self, state):
        self.bytes = {p: float(v[0]) for p, v in state.items()}
        self.messages = {p: int(v[1]) for p, v in state.items()}


class Request:
    """A non-blocking operation; `on_done` copies staged data back.

    `ready_at` (perf_counter seconds) is when an emulated network would have
    delivered it: Wait sleeps only for what is left of that time, so work done
    between start and Wait overlaps the emulated transfer."""

    def __init__(self, req, on_done=None, keep=(), ready_at=0.0):
        self.req = req
        self.on_done = on_done
        self.keep = keep          # buffers that must stay alive until completion
        self.done = False
        self.ready_at = ready_at

    def _finish(self):
        self.done = True
        if self.on_done is not None:
            self.on_done()
        self.keep = ()

    def Wait(self):
        if not self.done:
            self.req.Wait()
            left = self.ready_at - time.perf_counter()
            if left > 0:
                time.sleep(left)
            self._finish()

    def Test(self) -> bool:
        if not self.done and self.req.Test() and time.perf_counter() >= self.ready_at:
            self._finish()
        return self.done

    def Cancel(self):
        if not self.done:
            self.req.Cancel()


class Channel:
    """Wraps a communicator: counted, optionally emulated, device-aware traffic."""

    def __init__(self, comm, *, backend: Backend | None = None,
                 emulate: NetworkEmulation | None = None, counters: Counters | None = None):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.backend = backend or Backend("cpu")
        self.emulate = emulate or NetworkEmulation()
        self.counters = counters or Counters()
        self.label = "train"

    # -- accounting --------------------------------------------------------
    @contextmanager
    def phase(self, label: str):
        """Book everything inside the block under `label`."""
        prev, self.label = self.label, label
        try:
            yield self
        finally:
            self.label = prev

    def book(self, nbytes, messages, defer=False):
        """Count; with emulation, sleep the alpha-beta time now, or (defer)
        return the time at which a non-blocking operation is delivered."""
        self.counters.add(self.label, nbytes, messages)
        # the stop agreement is non-blocking and overlapped: no emulated cost
        if self.emulate.active and self.label != "control":
            if defer:
                t = cm.alpha_beta_time(nbytes, messages, self.emulate.alpha, self.emulate.beta)
                self.counters.emulated_s += t
                return time.perf_counter() + t
            self.counters.emulated_s += self.emulate.charge(nbytes, messages)
        return 0.0

    def split(self, color, key=None) -> "Channel | None":
        """A channel on a sub-communicator that books into the same counters."""
        sub = self.comm.Split(color, self.rank if key is None else key)
        if sub == MPI.COMM_NULL:
            return None
        return self.wrap(sub)

    def wrap(self, comm) -> "Channel":
        """A channel on an existing sub-communicator, sharing counters."""
        return Channel(comm, backend=self.backend, emulate=self.emulate, counters=self.counters)

    # -- buffer staging ----------------------------------------------------
    def _out(self, buf, slot=0):
        """The buffer MPI should read: staged host copy or the buffer itself."""
        if self.backend.needs_staging(buf):
            return self.backend.stage_out(buf, slot)
        if is_device_array(buf):
            self.backend.synchronize()
        return buf

    def _in(self, buf, slot=1):
        """(buffer MPI should write, function that finishes the copy back)."""
        if self.backend.needs_staging(buf):
            host = self.backend.host_buffer(buf.shape, buf.dtype, slot)
            return host, (lambda: self.backend.stage_in(host, buf))
        if is_device_array(buf):
            self.backend.synchronize()
        return buf, None

    @staticmethod
    def _nbytes(buf) -> int:
        return int(buf.nbytes)

    # -- collectives -------------------------------------------------------
    def Allreduce(self, buf, op=MPI.SUM):
        """In-place allreduce of `buf` (any backend array)."""
        self.book(*cm.allreduce_booking(self._nbytes(buf), self.size))
        if self.size == 1:
            return buf
        host = self._out(buf)
        self.comm.Allreduce(MPI.IN_PLACE, host, op=op)
        if host is not buf:
            self.backend.stage_in(host, buf)
        return buf

    def Iallreduce(self, buf, op=MPI.SUM) -> Request:
        """Non-blocking in-place allreduce; booked when started, its emulated
        network time charged at completion (overlapped with the work between)."""
        ready = self.book(*cm.allreduce_booking(self._nbytes(buf), self.size), defer=True)
        host = self._out(buf, slot="iar")
        req = self.comm.Iallreduce(MPI.IN_PLACE, host, op=op)
        done = (lambda: self.backend.stage_in(host, buf)) if host is not buf else None
        return Request(req, done, keep=(host,), ready_at=ready)

    def Allgather(self, sendbuf, recvbuf):
        """recvbuf (P x m) gets every rank's sendbuf (m)."""
        self.book(*cm.allgather_booking(self._nbytes(sendbuf), self.size))
        src = self._out(sendbuf, slot=0)
        dst, done = self._in(recvbuf, slot=1)
        self.comm.Allgather(src, dst)
        if done:
            done()
        return recvbuf

    def Allgatherv(self, sendbuf, recvbuf, counts):
        """recvbuf (1-D, sum(counts) items) gets every rank's sendbuf in rank
        order; counts[q] = items rank q sends (known to every rank). Booked
        per cm.allgatherv_booking: every block but the next rank's."""
        counts = [int(c) for c in counts]
        item = int(recvbuf.itemsize)
        self.book(*cm.allgatherv_booking([c * item for c in counts], self.size, self.rank))
        if self.size == 1:
            recvbuf[:counts[0]] = sendbuf[:counts[0]]
            return recvbuf
        src = self._out(sendbuf, slot=0)
        dst, done = self._in(recvbuf, slot=1)
        self.comm.Allgatherv(src, [dst, counts])
        if done:
            done()
        return recvbuf

    def Bcast(self, buf, root=0):
        self.book(*cm.bcast_booking(self._nbytes(buf), self.size))
        if self.size == 1:
            return buf
        host = self._out(buf) if self.rank == root else self._in(buf)[0]
        self.comm.Bcast(host, root=root)
        if host is not buf and self.rank != root:
            self.backend.stage_in(host, buf)
        return buf

    def Barrier(self):
        self.book(*cm.barrier_booking(self.size))
        self.comm.Barrier()

    def Ibarrier(self) -> Request:
        self.book(*cm.barrier_booking(self.size))
        return Request(self.comm.Ibarrier())

    def allreduce_values(self, values, op=MPI.SUM) -> np.ndarray:
        """Allreduce of a few host scalars (float64); returns a new array."""
        arr = np.array(values, dtype=np.float64).ravel()
        return self.Allreduce(arr, op=op)

    # -- point-to-point ----------------------------------------------------
    def Send(self, buf, dest, tag=0):
        self.book(self._nbytes(buf), 1)
        self.comm.Send(self._out(buf), dest, tag)

    def Isend(self, buf, dest, tag=0, synchronous=False) -> Request:
        """Non-blocking send (Issend when `synchronous`); the caller keeps
        `buf` unchanged until the request completes."""
        self.book(self._nbytes(buf), 1)
        src = self._out(buf, slot=("isend", dest, tag))
        post = self.comm.Issend if synchronous else self.comm.Isend
        return Request(post(src, dest, tag), keep=(src, buf))

    def Issend(self, buf, dest, tag=0) -> Request:
        return self.Isend(buf, dest, tag, synchronous=True)

    def Recv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):
        dst, done = self._in(buf)
        self.comm.Recv(dst, source, tag, status)
        if done:
            done()
        return buf

    def Irecv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG) -> Request:
        dst, done = self._in(buf, slot=("irecv", source, tag))
        return Request(self.comm.Irecv(dst, source, tag), done, keep=(dst, buf))

    def Sendrecv(self, sendbuf, dest, recvbuf, source, sendtag=0, recvtag=MPI.ANY_TAG):
        """Send to `dest` while receiving from `source` (one booked message)."""
        self.book(self._nbytes(sendbuf), 1)
        src = self._out(sendbuf, slot=0)
        dst, done = self._in(recvbuf, slot=1)
        self.comm.Sendrecv(src, dest, sendtag, dst, source, recvtag)
        if done:
            done()
        return recvbuf

    def Improbe(self, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):
        """A matched probe: the returned message can only be received by us."""
        return self.comm.Improbe(source, tag, status)

    def Mprobe(self, source, tag, status=None):
        """Blocking matched probe (a probe sends nothing: not booked)."""
        return self.comm.Mprobe(source, tag, status)

    def Mrecv(self, message, buf):
        """Receive a matched message into `buf`."""
        dst, done = self._in(buf)
        message.Recv(dst)
        if done:
            done()
        return buf
