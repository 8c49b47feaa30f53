"""gosgd under MPI: push-sum conservation, no lost or duplicated message,
clean drain at any step counts, convergence of pure mixing, deterministic
mode against a serial float64 simulation, checkpoint round trip.

One launch of 8 ranks tests every world size on sub-communicators. Every
rank starts from a DIFFERENT x_i (with equal starts any merge weight would
pass) and the mixing tests use lr = 0, so only gossip moves the models.
"""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.catalog import config_from_dict
from mpidsgd.algorithms import REGISTRY
from mpidsgd.algorithms import gosgd
from mpidsgd.algorithms.gosgd import push_schedule
from mpidsgd.backend import Backend
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.gossip import Mailbox
from mpidsgd.kernels.cpu.mixing import _mix_par
from mpidsgd.models import build_model
from mpiutil import FakeDeviceArray, assert_all, sub_comms

WORLD = MPI.COMM_WORLD
D, K, B = 6, 3, 4          # features, classes, batch: softmax has (D+1)*K params


class FakeShard:
    """Batches that depend only on (rank, batch number)."""

    steps_per_epoch = 1000

    def __init__(self, rank):
        self.rank, self.k = rank, 0

    def next_batch(self):
        rng = np.random.default_rng([7, self.rank, self.k])
        self.k += 1
        return rng.normal(size=(B, D)), rng.integers(0, K, B), np.arange(B)


def start(rank, n):
    return np.random.default_rng([99, rank]).normal(size=n) * (1 + rank)


def make(sub, *, steps=10, seed=0, dtype="float64", **algo):
    """A gosgd instance on `sub`, rank-specific start x_i (float64 unless asked)."""
    table = {"run": {"steps": steps, "seed": seed, "dtype": dtype},
             "algo": {"name": "gosgd", "lr": 0.0, **algo}}
    cfg = config_from_dict(table)
    topo = SimpleNamespace(rank=sub.rank, size=sub.size, world=sub)   # cheap per run
    backend = Backend("cpu")
    ch = Channel(sub, backend=backend)
    model = build_model("softmax", input_shape=(D,), n_outputs=K, dtype=dtype)
    params = start(topo.rank, model.layout.size).astype(dtype)
    algo = REGISTRY["gosgd"](cfg, topo, backend, model, params, ch)
    shard = FakeShard(topo.rank)
    algo.plan(shard)
    return algo, shard, model


def run_to_end(algo, shard):
    while not algo.done():
        algo.step(shard)
    algo.finish()


def check_conservation(algo, x0, sub, what):
    """Σα = 1, Σα_i x_i = Σ x_i^0 / P, consensus = mean start, every push
    received exactly once (sent_to matrix = transposed recv_from matrix)."""
    P = sub.size
    tot_a = sub.allreduce(algo.alpha)
    wx = np.zeros_like(x0)
    sub.Allreduce(algo.alpha * algo.params, wx)
    mean0 = np.zeros_like(x0)
    sub.Allreduce(x0 / P, mean0)
    ok = abs(tot_a - 1.0) <= 1e-12
    ok &= np.max(np.abs(wx - mean0)) <= 1e-10 * max(1.0, np.max(np.abs(mean0)))
    ok &= np.max(np.abs(algo.consensus_params() - mean0)) <= 1e-10
    if algo.box is not None:
        S = np.array(sub.allgather(algo.box.sent_to))
        R = np.array(sub.allgather(algo.box.recv_from))
        ok &= np.array_equal(S, R.T) and np.all(np.diag(S) == 0)
        ok &= S.sum() == sub.allreduce(algo.pushes) == sub.allreduce(algo.merged)
    assert_all(ok, f"{what}: sum alpha {tot_a!r}, max dev {np.max(np.abs(wx - mean0))}", comm=sub)


@pytest.mark.parallel(nprocs=8)
def test_conservation_and_clean_drain_in_100_random_runs():
    """P = 1..8, random p, max_outstanding and VERY different step counts per
    rank (1..40), free-running: drain always terminates and nothing is lost."""
    rng = np.random.default_rng(2024)
    pushes = 0
    for run in range(100):
        P = int(rng.integers(1, 9)) if run >= 8 else run + 1
        p = float(rng.uniform(0.05, 1.0))
        mo = int(rng.integers(1, 4))
        steps = rng.integers(1, 41, size=8)
        budget = "shared" if run % 4 == 3 else "rank"
        sub = WORLD.Split(0 if WORLD.rank < P else MPI.UNDEFINED, WORLD.rank)
        if sub != MPI.COMM_NULL:
            algo, shard, _ = make(sub, steps=40, seed=run, p=p, max_outstanding=mo, budget=budget)
            if budget == "rank":
                algo.total_steps = int(steps[sub.rank])
            else:      # one slow rank: the others take over its share
                algo.compute_emu.factor = 1.0 + 30.0 * (sub.rank == P - 1)
                algo.compute_emu.active = True
            x0 = algo.params.copy()
            run_to_end(algo, shard)
            if budget == "rank":
                assert_all(algo.step_count == steps[sub.rank], "step budget", comm=sub)
            else:
                total = sub.allreduce(algo.step_count)
                assert_all(P * 40 <= total <= P * 40 + 40 * P * P, f"shared budget {total}",
                           comm=sub)
            check_conservation(algo, x0, sub, f"run {run} P={P} p={p:.2f} mo={mo}")
            pushes += algo.pushes
            sub.Free()
        WORLD.Barrier()
    assert_all(WORLD.allreduce(pushes) > 500, "the runs exercised gossip")


@pytest.mark.parallel(nprocs=8)
def test_quiesce_mid_run_leaves_nothing_in_flight_and_training_goes_on():
    for P, sub in sub_comms([2, 5, 8]):
        if sub == MPI.COMM_NULL:
            continue
        algo, shard, _ = make(sub, steps=40, p=0.7, max_outstanding=2)
        x0 = algo.params.copy()
        for _ in range(15 + 3 * sub.rank):      # ranks at different steps
            algo.step(shard)
        algo.quiesce()
        state = algo.state_dict()
        # quiescent: every push so far was merged, Σα = 1 exactly as stored
        S = np.array(sub.allgather(state["local"]["sent_to"]))
        R = np.array(sub.allgather(state["local"]["recv_from"]))
        tot = sub.allreduce(float(state["local"]["alpha"]))
        assert_all(np.array_equal(S, R.T) and abs(tot - 1) <= 1e-12, f"quiesce P={P}", comm=sub)
        run_to_end(algo, shard)
        check_conservation(algo, x0, sub, f"after quiesce P={P}")


@pytest.mark.parallel(nprocs=8)
def test_pure_mixing_converges_to_the_initial_average():
    """lr = 0: the spread max_i |x_i - x̄| falls from its start to ~0, and
    every rank ends at the exact initial average (push-sum is unbiased)."""
    for P, sub in sub_comms([2, 3, 8]):
        if sub == MPI.COMM_NULL:
            continue
        for det in (True, False):
            algo, shard, _ = make(sub, steps=400, p=1.0, deterministic=det, seed=3)
            mean0 = np.zeros_like(algo.params)
            sub.Allreduce(algo.params / P, mean0)
            spread = [sub.allreduce(np.max(np.abs(algo.params - mean0)), op=MPI.MAX)]
            while not algo.done():
                algo.step(shard)
                if algo.step_count in (5, 400):
                    spread.append(sub.allreduce(np.max(np.abs(algo.params - mean0)), op=MPI.MAX))
            algo.finish()
            # lock step: mixing has begun after 5 steps and goes on to the
            # end; free-running ranks mix as messages arrive, the drain merges
            # the last ones
            ok = spread[0] > 0.5 and (spread[1] < spread[0] or not det)
            ok &= spread[2] < 1e-9 if det else spread[2] < 0.5 * spread[0]
            ok &= np.max(np.abs(algo.consensus_params() - mean0)) < 1e-12
            assert_all(ok, f"P={P} det={det} spread {spread}", comm=sub)


def simulate(P, T, p, seed, lr, momentum, model, shards, x0):
    """Deterministic gosgd (docs/algorithms/gossip.md) in one process, float64: every rank
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


@pytest.mark.parallel(nprocs=8)
def test_deterministic_mode_equals_serial_simulation_bit_for_bit():
    T, p, lr, mom = 25, 0.6, 0.05, 0.9
    for P, sub in sub_comms(range(1, 9)):
        if sub == MPI.COMM_NULL:
            continue
        finals = []
        for _ in range(2):                       # run to run: identical
            algo, shard, model = make(sub, steps=T, p=p, deterministic=True, seed=11,
                                      lr=lr, momentum=mom)
            run_to_end(algo, shard)
            finals.append((algo.params.copy(), algo.alpha, algo.consensus_params().copy()))
        x0 = [start(r, model.layout.size) for r in range(P)]
        xs, al = simulate(P, T, p, 11, lr, mom, model, [FakeShard(r) for r in range(P)], x0)
        r = sub.rank
        sim_cons = sum(a * v for a, v in zip(al, xs)) / sum(al)
        ok = np.array_equal(finals[0][0], finals[1][0]) and finals[0][1] == finals[1][1]
        ok &= np.array_equal(finals[0][0], xs[r]) and finals[0][1] == al[r]
        ok &= np.allclose(finals[0][2], sim_cons, rtol=0, atol=1e-13)
        ok &= P == 1 or algo.merged == algo.box.recv_from.sum()
        ok &= algo.staleness == 0                # merged in the step it was pushed
        assert_all(ok, f"P={P}: max diff {np.max(np.abs(finals[0][0] - xs[r]))}", comm=sub)


@pytest.mark.parallel(nprocs=8)
def test_checkpoint_round_trip_continues_identically():
    """Deterministic: quiesce + state_dict at step 9, a fresh instance loads
    it and continues to step 20 with the same bits as an uninterrupted run."""
    kw = dict(steps=20, p=0.5, deterministic=True, seed=5, lr=0.05, momentum=0.9)
    for P, sub in sub_comms([1, 3, 8]):
        if sub == MPI.COMM_NULL:
            continue
        ref, shard, _ = make(sub, **kw)
        run_to_end(ref, shard)
        a, shard, _ = make(sub, **kw)
        for _ in range(9):
            a.step(shard)
        a.quiesce()
        state = a.state_dict()
        state = copy.deepcopy(state)      # nested sections (the optimizer's) copied too
        b, _, _ = make(sub, **kw)
        b.load_state_dict(state)
        run_to_end(b, shard)                     # the shard's position carries on
        ok = np.array_equal(b.params, ref.params) and b.alpha == ref.alpha
        ok &= b.step_count == 20 and np.array_equal(b.consensus_params(), ref.consensus_params())
        assert_all(ok, f"P={P}", comm=sub)


@pytest.mark.parallel(nprocs=8)
def test_mailbox_payload_pairs_weight_and_step_and_stages_device_buffers():
    """float32 payload: x, the exact float64 weight and the origin step arrive
    together; a device-resident x takes the staging path."""
    for P, sub in sub_comms([2]):
        if sub == MPI.COMM_NULL:
            continue
        ch = Channel(sub, backend=Backend("cpu"))
        box = Mailbox(ch, 5, np.float32, max_outstanding=2)
        alpha = 1.0 / 3 * 2.0 ** -sub.rank              # not representable in float32
        x = np.arange(5, dtype=np.float32) + 10 * sub.rank
        got = []
        if sub.rank == 0:
            box.push(FakeDeviceArray(x), alpha, 77, 1, slot=0)
            box.push(x + 1, alpha / 2, 78, 1, slot=1)
        box.drain(lambda xs, a, s, src: got.append((xs.copy(), a, s, src)), final=True)
        ok = True
        if sub.rank == 1:
            ok = len(got) == 2 and [g[2] for g in got] == [77, 78]
            ok &= got[0][1] == 1.0 / 3 and got[1][1] == 1.0 / 6 and got[0][3] == 0
            ok &= np.array_equal(got[0][0], np.arange(5, dtype=np.float32))
            ok &= np.array_equal(got[1][0], np.arange(5, dtype=np.float32) + 1)
        b, m = ch.counters.snapshot()
        ok &= sub.rank == 1 or m["train"] >= 2
        assert_all(ok, f"got {got}", comm=sub)


@pytest.mark.parallel(nprocs=2)
def test_merge_kernel_is_compiled_before_the_first_step(monkeypatch):
    """The first call of the Numba merge kernel (seconds when compiled, about
    0.5 s from the disk cache) must not fall inside the training loop: there it
    came at each rank's first merge, at a different moment on every rank, and
    no asynchronous stop-agreement round could complete while any rank was
    stalled, so checkpoint.every and signal stops were agreed late or never.
    Construction must call the kernel once in the parameters' dtype, so the
    merges of the loop find it compiled."""
    calls = []
    real = gosgd.mix
    monkeypatch.setattr(gosgd, "mix", lambda x, o, w: (calls.append((x.dtype, o.dtype, x.ndim,
                                                                     x.flags.c_contiguous)),
                                                       real(x, o, w)))
    ok, seen = True, []
    for dtype in ("float32", "float64"):
        calls.clear()
        algo, shard, _ = make(WORLD, dtype=dtype, p=1.0)
        want = np.dtype(dtype)
        ok &= calls == [(want, want, 1, True)]
        # the specialisation a merge of the loop uses is there already
        seen = [str(sig[0].dtype) for sig in _mix_par.signatures]
        ok &= dtype in seen
        run_to_end(algo, shard)
        ok &= algo.merged > 0 and len(calls) == 1 + algo.merged
    assert_all(ok, f"kernel calls {calls}, compiled for {seen}")
