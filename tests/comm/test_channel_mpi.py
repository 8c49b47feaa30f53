"""Channel booking rules, staging of device buffers, emulation bookkeeping,
error agreement.

One launch of 5 ranks (a scenario, see tests/helpers/mpi_scenario.py) tests
every world size 1..5 on sub-communicators, point-to-point staging and the
error agreement on 3 of them; it returns raw observations and each claim is
a serial test on them."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.agree import agree_error
from mpidsgd.comm.channel import Channel, NetworkEmulation
from mpi_scenario import run_scenario
from mpiutil import FakeDeviceArray, sub_comms

PS = [str(P) for P in range(1, 6)]
SIZES = [3, 9, 2, 9, 14, 1]


def counters(ch):
    """The channel's bytes and messages by phase, as plain numbers."""
    b, m = ch.counters.snapshot()
    return {k: float(v) for k, v in b.items()}, {k: int(v) for k, v in m.items()}


def observe_collectives(sub):
    """Allreduce of rank+1 under train; Allgather and Bcast under eval."""
    P = sub.size
    ch = Channel(sub)
    x = np.full(1000, float(sub.rank + 1))
    ch.Allreduce(x)
    with ch.phase("eval"):
        ch.Allgather(np.zeros(3), np.zeros((P, 3)))
        ch.Bcast(np.zeros(10, np.float32), root=0)
    b, m = counters(ch)
    return {"sums": sub.allgather(sorted(set(x.tolist()))),
            "bytes": sub.allgather(b), "messages": sub.allgather(m)}


def observe_point_to_point(comm):
    """Sendrecv around a ring and an Allreduce of fake device buffers, then
    Sendrecv of changing sizes (sparse messages) through the staging."""
    ch = Channel(comm, backend=Backend("cpu"))
    r, P = comm.rank, comm.size
    # a fake device array takes the host-staging path of a real GPU buffer
    send = FakeDeviceArray(np.arange(6, dtype=np.float32) + 10 * r)
    recv = FakeDeviceArray(np.zeros(6, np.float32))
    ch.Sendrecv(send, (r + 1) % P, recv, (r - 1) % P)
    buf = FakeDeviceArray(np.full(4, float(r)))
    ch.Allreduce(buf)
    b, m = counters(ch)
    # sparse messages change size every step: staging should reuse one host
    # buffer per slot and dtype (views of it), whatever the sizes
    sized = []
    for size in SIZES:
        send = FakeDeviceArray(np.arange(size, dtype=np.float32) * (r + 1))
        got = FakeDeviceArray(np.full(size, -1.0, np.float32))
        ch.Sendrecv(send, (r + 1) % P, got, (r - 1) % P)
        sized.append(got.get().tolist())
    return {"recv": comm.allgather(recv.get().tolist()),
            "allreduce": comm.allgather(buf.get().tolist()),
            "bytes": comm.allgather(b), "messages": comm.allgather(m),
            "sized": comm.allgather(sized), "kept": comm.allgather(len(ch.backend._pinned))}


def long_message(r):
    """An error message longer than any fixed buffer, naming rank r."""
    return f"data.path /data/{'x' * 3000}: broken on rank {r} é"


def observe_agreement(comm):
    """agree_error with ranks 1 and 2 failing, nobody failing, an empty
    message on rank 2, and nobody failing on a Channel under `setup`."""
    r = comm.rank
    got = agree_error(comm, long_message(r) if r >= 1 else None)
    none = agree_error(comm, None)
    empty = agree_error(comm, "" if r == 2 else None)
    ch = Channel(comm)
    with ch.phase("setup"):
        on_channel = agree_error(ch, None)
    b, _ = counters(ch)
    return {"got": comm.allgather(got), "none": comm.allgather(none),
            "empty": comm.allgather(empty), "on_channel": comm.allgather(on_channel),
            "bytes": comm.allgather(b)}


def observe_channel(tmp):
    """Scenario on 5 ranks: collectives for P = 1..5, point to point and the
    error agreement on 3 ranks."""
    seen = {"collectives": {}}
    for P, sub in sub_comms(range(1, 6)):
        if sub != MPI.COMM_NULL:
            seen["collectives"][str(P)] = observe_collectives(sub)
    for _, sub in sub_comms([3]):
        if sub != MPI.COMM_NULL:
            seen["p2p"] = observe_point_to_point(sub)
            seen["agree"] = observe_agreement(sub)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_channel", 5, tmp_path_factory)


@pytest.mark.parametrize("P", PS)
def test_allreduce_sums_over_the_ranks(obs, P):
    p = int(P)
    assert obs["collectives"][P]["sums"] == [[p * (p + 1) / 2]] * p


@pytest.mark.parametrize("P", PS)
def test_allreduce_books_the_ring_and_tree_figures_under_train(obs, P):
    o, p = obs["collectives"][P], int(P)
    lg = cm.log2ceil(p)
    for b, m in zip(o["bytes"], o["messages"]):
        assert b.get("train", 0) == 2 * (p - 1) / p * 8000 and m.get("train", 0) == 2 * lg


@pytest.mark.parametrize("P", PS)
def test_allgather_and_bcast_book_their_figures_under_eval(obs, P):
    o, p = obs["collectives"][P], int(P)
    for b, m in zip(o["bytes"], o["messages"]):
        assert b.get("eval", 0) == (p - 1) * 24 + 40 * (p - 1) / p
        assert m.get("eval", 0) == 2 * cm.log2ceil(p)


def test_sendrecv_of_device_buffers_delivers_the_left_neighbours_data(obs):
    for r, got in enumerate(obs["p2p"]["recv"]):
        assert got == (np.arange(6, dtype=np.float32) + 10 * ((r - 1) % 3)).tolist()


def test_allreduce_of_a_device_buffer_sums_over_the_ranks(obs):
    assert obs["p2p"]["allreduce"] == [[float(sum(range(3)))] * 4] * 3


def test_point_to_point_books_exact_bytes(obs):
    P = 3
    for b, m in zip(obs["p2p"]["bytes"], obs["p2p"]["messages"]):
        assert b["train"] == 24 + 2 * (P - 1) / P * 32 and m["train"] == 1 + 2 * cm.log2ceil(P)


def test_staging_stays_correct_across_message_sizes(obs):
    for r, sized in enumerate(obs["p2p"]["sized"]):
        want = [(np.arange(n, dtype=np.float32) * ((r - 1) % 3 + 1)).tolist() for n in SIZES]
        assert sized == want, f"rank {r}"


def test_staging_keeps_one_host_buffer_per_slot_and_dtype(obs):
    # Sendrecv's two slots and the Allreduce's, float32 / float64
    assert obs["p2p"]["kept"] == [3] * 3


def test_emulation_charges_alpha_beta_on_booked_figures():
    emu = NetworkEmulation(alpha=1e-3, beta=1e-6)
    ch = Channel(MPI.COMM_SELF, emulate=emu)
    ch.book(2000, 3)
    assert ch.counters.emulated_s == pytest.approx(3e-3 + 2e-3)
    with ch.phase("control"):
        ch.book(4, 1)     # the overlapped stop agreement costs no emulated time
    assert ch.counters.emulated_s == pytest.approx(5e-3)



def test_error_agreement_gives_every_rank_the_lowest_failing_ranks_whole_message(obs):
    # ranks 1 and 2 fail; rank 1's message (longer than any fixed buffer) wins
    assert obs["agree"]["got"] == [long_message(1)] * 3


def test_error_agreement_without_a_failure_is_none_everywhere(obs):
    assert obs["agree"]["none"] == [None] * 3


def test_error_agreement_treats_an_empty_message_as_an_error(obs):
    assert obs["agree"]["empty"] == [""] * 3


def test_error_agreement_on_a_channel_books_only_the_vote_under_its_phase(obs):
    a = obs["agree"]
    assert a["on_channel"] == [None] * 3
    for b in a["bytes"]:
        assert b.get("setup", 0) == cm.allreduce_booking(8, 3)[0] and set(b) == {"setup"}
