"""Report/reply traffic between workers and one server rank (parameter-server style).

A worker sends a report (tag REPORT, or FINAL for its last one) and blocks for
the server's reply; a worker that reaches an agreed quiescent point sends a
one-number QUIESCE marker instead. The server receives from any worker and
answers reports with a reply to that worker. Every report gets exactly one
reply, so once every worker has sent its marker and the server has counted
them, no message is in flight. Nothing here knows what a report contains.
"""
from __future__ import annotations

import numpy as np
from mpi4py import MPI

REPORT, FINAL, QUIESCE, REPLY = 0x5C1, 0x5C2, 0x5C3, 0x5C4
KINDS = {REPORT: "report", FINAL: "final", QUIESCE: "quiesce"}


def client_exchange(report, reply, *, channel, server=0, final=False):
    """Worker: send `report`, then receive the server's answer into `reply`."""
    channel.Send(report, server, FINAL if final else REPORT)
    channel.Recv(reply, source=server, tag=REPLY)
    return reply


def client_quiesce(*, channel, server=0):
    """Worker: tell the server this rank has nothing in flight and will send
    no report until the quiescent point is over."""
    channel.Send(np.zeros(1, np.float64), server, QUIESCE)


def server_receive(buf, *, channel):
    """Server: block for the next message from any worker; (source, kind).
    `buf` must hold the largest report; a marker fills only its first entry."""
    status = MPI.Status()
    channel.Recv(buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
    tag = status.Get_tag()
    if tag not in KINDS:
        raise RuntimeError(f"report server: unexpected tag {tag} from rank {status.Get_source()}")
    return status.Get_source(), KINDS[tag]


def server_reply(buf, dest, *, channel):
    """Server: answer the report `dest` is waiting on."""
    channel.Send(buf, dest, REPLY)
