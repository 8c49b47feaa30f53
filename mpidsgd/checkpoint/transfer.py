"""Moving packed state between ranks on the checkpoint's private channel.

A rank's state travels as `format.pack` makes it: a JSON header and one byte
payload. Both go point-to-point on one tag, the payload in pieces of at most
CHUNK bytes (MPI counts are 32-bit), so a state of any size crosses in the
same messages on save and on resume.
"""
from __future__ import annotations

import numpy as np

TAG = 0x5CE          # point-to-point tag on the checkpoint communicator
CHUNK = 1 << 28      # bytes per message: large states go in pieces


def pieces(buf: np.ndarray):
    """Consecutive views of `buf`, CHUNK bytes each (the last may be shorter)."""
    return [buf[a:a + CHUNK] for a in range(0, buf.size, CHUNK)]


def send_packed(ch, dest: int, header: bytes, payload: np.ndarray):
    """Send one packed state to `dest` (its sizes travel separately)."""
    ch.Send(np.frombuffer(header, np.uint8), dest, TAG)
    for part in pieces(payload):
        ch.Send(part, dest, TAG)


def recv_packed(ch, source: int, n_header: int, n_payload: int):
    """(header bytes, payload) that `source` sent with send_packed."""
    header = np.empty(int(n_header), np.uint8)
    ch.Recv(header, source, TAG)
    payload = np.empty(int(n_payload), np.uint8)
    for part in pieces(payload):
        ch.Recv(part, source, TAG)
    return header.tobytes(), payload


def bcast_bytes(ch, data: bytes, is_root: bool) -> bytes:
    """Rank 0's `data` on every rank: its length, then the bytes in pieces."""
    n = np.array([len(data)], np.int64)
    ch.Bcast(n)
    buf = np.frombuffer(data, np.uint8).copy() if is_root else np.empty(int(n[0]), np.uint8)
    for part in pieces(buf):
        ch.Bcast(part)
    return buf.tobytes()
