"""Channel booking rules, staging of device buffers, emulation bookkeeping.

One launch of 5 ranks tests every world size 1..5 on sub-communicators."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel, NetworkEmulation
from mpiutil import FakeDeviceArray, assert_all, sub_comms


@pytest.mark.parallel(nprocs=5)
def test_collective_bookings_match_formulas_for_P_1_to_5():
    for P, sub in sub_comms(range(1, 6)):
        if sub == MPI.COMM_NULL:
            continue
        ch = Channel(sub)
        x = np.full(1000, float(sub.rank + 1))
        ch.Allreduce(x)
        ok = np.all(x == P * (P + 1) / 2)
        with ch.phase("eval"):
            ch.Allgather(np.zeros(3), np.zeros((P, 3)))
            ch.Bcast(np.zeros(10, np.float32), root=0)
        b, m = ch.counters.snapshot()
        lg = cm.log2ceil(P)
        ok &= b.get("train", 0) == 2 * (P - 1) / P * 8000 and m.get("train", 0) == 2 * lg
        ok &= b.get("eval", 0) == (P - 1) * 24 + 40 * (P - 1) / P
        ok &= m.get("eval", 0) == 2 * lg
        assert_all(ok, f"P={P} bytes={b} msgs={m}", comm=sub)


@pytest.mark.parallel(nprocs=3)
def test_point_to_point_books_exact_bytes_and_staging_roundtrip():
    comm = MPI.COMM_WORLD
    ch = Channel(comm, backend=Backend("cpu"))
    r, P = comm.rank, comm.size
    # a fake device array takes the host-staging path of a real GPU buffer
    send = FakeDeviceArray(np.arange(6, dtype=np.float32) + 10 * r)
    recv = FakeDeviceArray(np.zeros(6, np.float32))
    ch.Sendrecv(send, (r + 1) % P, recv, (r - 1) % P)
    got = recv.get()
    ok = np.array_equal(got, np.arange(6, dtype=np.float32) + 10 * ((r - 1) % P))
    buf = FakeDeviceArray(np.full(4, float(r)))
    ch.Allreduce(buf)
    ok &= np.all(buf.get() == sum(range(P)))
    b, m = ch.counters.snapshot()
    ok &= b["train"] == 24 + 2 * (P - 1) / P * 32 and m["train"] == 1 + 2 * cm.log2ceil(P)
    assert_all(ok, f"got {got}, counters {b} {m}")
    # sparse messages change size every step: staging reuses one host buffer
    # per slot and dtype (views of it), whatever the sizes, and stays correct
    for size in [3, 9, 2, 9, 14, 1]:
        send = FakeDeviceArray(np.arange(size, dtype=np.float32) * (r + 1))
        recv = FakeDeviceArray(np.full(size, -1.0, np.float32))
        ch.Sendrecv(send, (r + 1) % P, recv, (r - 1) % P)
        ok &= np.array_equal(recv.get(), np.arange(size, dtype=np.float32) * ((r - 1) % P + 1))
    kept = sorted(ch.backend._pinned)
    ok &= len(kept) == 3        # Sendrecv's two slots and the Allreduce's, float32 / float64
    assert_all(ok, f"staging across sizes: kept {kept}")


def test_emulation_charges_alpha_beta_on_booked_figures():
    emu = NetworkEmulation(alpha=1e-3, beta=1e-6)
    ch = Channel(MPI.COMM_SELF, emulate=emu)
    ch.book(2000, 3)
    assert ch.counters.emulated_s == pytest.approx(3e-3 + 2e-3)
    with ch.phase("control"):
        ch.book(4, 1)     # the overlapped stop agreement costs no emulated time
    assert ch.counters.emulated_s == pytest.approx(5e-3)


@pytest.mark.parallel(nprocs=3)
def test_error_agreement_gives_every_rank_the_lowest_failing_ranks_whole_message():
    from mpidsgd.comm.agree import agree_error
    comm = MPI.COMM_WORLD
    r = comm.rank
    # ranks 1 and 2 fail; rank 1's message (longer than any fixed buffer) wins
    long = f"data.path /data/{'x' * 3000}: broken on rank {r} é"
    got = agree_error(comm, long if r >= 1 else None)
    ok = got == long.replace(f"rank {r}", "rank 1")
    # nobody fails: None everywhere
    ok &= agree_error(comm, None) is None
    # an empty message is still an error
    ok &= agree_error(comm, "" if r == 2 else None) == ""
    # on a Channel only the vote is booked, under the current phase
    ch = Channel(comm)
    with ch.phase("setup"):
        ok &= agree_error(ch, None) is None
    b, m = ch.counters.snapshot()
    ok &= b.get("setup", 0) == cm.allreduce_booking(8, comm.size)[0] and set(b) == {"setup"}
    assert_all(ok, f"rank {r}: {got[-30:] if got else got!r}, bytes {b}", comm=comm)
