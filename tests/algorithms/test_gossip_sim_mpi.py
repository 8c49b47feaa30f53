"""gosgd under MPI, deterministic mode and state: the deterministic mode
equals a serial float64 simulation bit for bit, a quiesced state_dict
continues identically, and the mailbox delivers the payload with its exact
weight and step (staging device buffers).

One 8-rank launch (a scenario, see tests/helpers/mpi_scenario.py) records
every rank's parameters, weights and counters; each claim is a serial test,
and the serial simulation runs in the test process.
"""
import copy
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.algorithms.gosgd import push_schedule
from mpidsgd.backend import Backend
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.gossip import Mailbox
from mpidsgd.models import build_model
from gossip_runs import D, K, FakeShard, make, run_to_end, start
from mpi_scenario import rank_hashes, run_scenario
from mpiutil import FakeDeviceArray, sub_comms

T, PUSH_P, LR, MOM, SEED = 25, 0.6, 0.05, 0.9, 11
PS = [str(P) for P in range(1, 9)]


def simulate(P, T, p, seed, lr, momentum, model, shards, x0):
    """Deterministic gosgd in one process, float64: every rank
    takes its SGD step, pushes as the shared schedule says (halving its
    weight), then merges what was pushed to it, in source-rank order."""
    x = [v.copy() for v in x0]
    alpha = [1.0 / P] * P
    vel = [np.zeros_like(v) for v in x0]
    g = np.zeros_like(x0[0])
    for t in range(T):
        for i in range(P):
            X, y, _ = shards[i].next_batch()
            model.loss_grad(x[i], X, y, g)
            vel[i] = momentum * vel[i] + g
            x[i] = x[i] - lr * vel[i]
        if P == 1:
            continue
        push, dest = push_schedule(seed, t, P, p)
        sent = {}
        for i in range(P):
            if push[i]:
                alpha[i] /= 2
                sent[i] = (x[i].copy(), alpha[i])
        for j in range(P):
            for s in range(P):
                if push[s] and dest[s] == j:
                    xs, a = sent[s]
                    w = a / (alpha[j] + a)
                    x[j] += w * (xs - x[j])
                    alpha[j] += a
    return x, alpha


def observe_deterministic(sub):
    """Two identical deterministic runs: every rank's final x, α, consensus."""
    finals = []
    for _ in range(2):
        algo, shard, model = make(sub, steps=T, p=PUSH_P, deterministic=True, seed=SEED,
                                  lr=LR, momentum=MOM)
        run_to_end(algo, shard)
        finals.append({"x": sub.allgather(algo.params.tolist()), "alpha": sub.allgather(algo.alpha),
                       "consensus": sub.allgather(algo.consensus_params().tolist())})
    finals[0]["merged"] = sub.allgather(int(algo.merged))
    finals[0]["received"] = sub.allgather(None if algo.box is None else int(algo.box.recv_from.sum()))
    finals[0]["staleness"] = sub.allgather(float(algo.staleness))
    return finals


def observe_checkpoint(sub):
    """Quiesce + state_dict at step 9, a fresh instance loads it and runs
    to step 20; an uninterrupted run for reference."""
    kw = dict(steps=20, p=0.5, deterministic=True, seed=5, lr=0.05, momentum=0.9)
    ref, shard, _ = make(sub, **kw)
    run_to_end(ref, shard)
    a, shard, _ = make(sub, **kw)
    for _ in range(9):
        a.step(shard)
    a.quiesce()
    state = copy.deepcopy(a.state_dict())      # nested sections (the optimizer's) copied too
    b, _, _ = make(sub, **kw)
    b.load_state_dict(state)
    run_to_end(b, shard)                     # the shard's position carries on
    return {"params": [rank_hashes(b.params, sub), rank_hashes(ref.params, sub)],
            "alpha": [sub.allgather(b.alpha), sub.allgather(ref.alpha)],
            "steps": sub.allgather(int(b.step_count)),
            "consensus": [rank_hashes(b.consensus_params(), sub),
                          rank_hashes(ref.consensus_params(), sub)]}


def observe_mailbox(sub):
    """Rank 0 pushes a float32 x as a fake device array, then x + 1, with
    weights not representable in float32; rank 1 drains."""
    ch = Channel(sub, backend=Backend("cpu"))
    box = Mailbox(ch, 5, np.float32, max_outstanding=2)
    alpha = 1.0 / 3 * 2.0 ** -sub.rank
    x = np.arange(5, dtype=np.float32) + 10 * sub.rank
    got = []
    if sub.rank == 0:
        box.push(FakeDeviceArray(x), alpha, 77, 1, slot=0)
        box.push(x + 1, alpha / 2, 78, 1, slot=1)
    box.drain(lambda xs, a, s, src: got.append([xs.tolist(), float(a), int(s), int(src)]), final=True)
    _, m = ch.counters.snapshot()
    return {"got": sub.allgather(got), "messages": sub.allgather(int(m.get("train", 0)))}


def observe_gossip_sim(tmp):
    """Scenario on 8 ranks: deterministic runs for P = 1..8, the checkpoint
    round trip for P = 1, 3, 8, the mailbox on 2 ranks."""
    seen = {"det": {}, "ckpt": {}}
    for P, sub in sub_comms(range(1, 9)):
        if sub != MPI.COMM_NULL:
            seen["det"][str(P)] = observe_deterministic(sub)
    for P, sub in sub_comms([1, 3, 8]):
        if sub != MPI.COMM_NULL:
            seen["ckpt"][str(P)] = observe_checkpoint(sub)
    for _, sub in sub_comms([2]):
        if sub != MPI.COMM_NULL:
            seen["mailbox"] = observe_mailbox(sub)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_gossip_sim", 8, tmp_path_factory)


def simulated(P):
    """The serial simulation of the deterministic runs: (x, α, consensus)."""
    model = build_model("softmax", input_shape=(D,), n_outputs=K, dtype="float64")
    x0 = [start(r, model.layout.size) for r in range(P)]
    xs, al = simulate(P, T, PUSH_P, SEED, LR, MOM, model, [FakeShard(r) for r in range(P)], x0)
    return xs, al, sum(a * v for a, v in zip(al, xs)) / sum(al)


@pytest.mark.parametrize("P", PS)
def test_deterministic_mode_is_identical_run_to_run(obs, P):
    one, two = obs["det"][P]
    assert one["x"] == two["x"] and one["alpha"] == two["alpha"]


@pytest.mark.parametrize("P", PS)
def test_deterministic_mode_equals_serial_simulation_bit_for_bit(obs, P):
    xs, al, _ = simulated(int(P))
    o = obs["det"][P][0]
    for r in range(int(P)):
        assert np.array_equal(o["x"][r], xs[r]), f"rank {r}: max diff {np.max(np.abs(o['x'][r] - xs[r]))}"
        assert o["alpha"][r] == al[r], f"rank {r}"


@pytest.mark.parametrize("P", PS)
def test_deterministic_consensus_matches_the_simulation(obs, P):
    _, _, cons = simulated(int(P))
    for c in obs["det"][P][0]["consensus"]:
        assert np.allclose(c, cons, rtol=0, atol=1e-13)


@pytest.mark.parametrize("P", PS[1:])
def test_deterministic_mode_merges_every_push_it_receives(obs, P):
    o = obs["det"][P][0]
    assert o["merged"] == o["received"]


@pytest.mark.parametrize("P", PS)
def test_deterministic_mode_merges_in_the_step_of_the_push(obs, P):
    assert obs["det"][P][0]["staleness"] == [0.0] * int(P)


@pytest.mark.parametrize("P", ["1", "3", "8"])
def test_checkpoint_round_trip_continues_identically(obs, P):
    o = obs["ckpt"][P]
    assert o["params"][0] == o["params"][1] and o["alpha"][0] == o["alpha"][1]
    assert o["steps"] == [20] * int(P) and o["consensus"][0] == o["consensus"][1]


def test_mailbox_delivers_weight_and_step_with_the_payload(obs):
    # the float64 weight arrives exact, with its origin step and source
    got = obs["mailbox"]["got"][1]
    assert [[g[1], g[2], g[3]] for g in got] == [[1.0 / 3, 77, 0], [1.0 / 6, 78, 0]]


def test_mailbox_stages_a_device_resident_payload(obs):
    # the first push was a device array: it takes the staging path
    got = obs["mailbox"]["got"][1]
    assert [g[0] for g in got] == [np.arange(5, dtype=np.float32).tolist(),
                                   (np.arange(5, dtype=np.float32) + 1).tolist()]


def test_mailbox_books_its_messages(obs):
    assert obs["mailbox"]["messages"][0] >= 2
