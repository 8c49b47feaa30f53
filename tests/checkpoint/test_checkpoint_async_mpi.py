"""Checkpoints of asynchronous algorithms under MPI (4 ranks): a fake one
defined here checkpoints only at agreed points after every rank quiesced,
with per-rank step counts restored; every registered asynchronous algorithm
checkpoints quiescent states and resumes."""
import json
import os
import signal
import time

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import reporting
from mpidsgd.algorithms import REGISTRY
from mpidsgd.algorithms.base import Algorithm, StepInfo, register
from mpidsgd.checkpoint.format import list_checkpoints, verify
from mpidsgd.errors import AgreedError
from mpiutil import assert_all, sub_comms
from resume_check import EVERY, N, shared_dir, sweep_sets, train_once, world_for

COMM = MPI.COMM_WORLD


# -- asynchronous algorithms ---------------------------------------------------------
class FakeAsync(Algorithm):
    """Ranks step at different speeds with no communication; params encode
    (rank, step) so a checkpoint's per-rank state can be checked for
    consistency; quiesce() is collective and counted. Rank 0 is the slow one
    and has the smallest budget (it leaves first), so `checkpoint.every`
    counting rank 0's steps is what decides."""

    name = "test_fake_async"
    synchronous = False

    def plan(self, shard):
        super().plan(shard)
        self.total_steps *= 1 if self.rank == 0 else 10
        self.quiesced = 0

    def step(self, shard):
        time.sleep(0.003 if self.rank == 0 else 0.0005)
        self.step_count += 1
        self.params[...] = 1000 * self.rank + self.step_count
        self.samples += 1
        return StepInfo(loss=None)

    def quiesce(self):
        self.quiesced += 1
        self.channel.Barrier()

    def state_dict(self):
        return {"shared": {}, "local": {"params": self.params, "step": self.step_count,
                                        "samples": self.samples, "quiesced": self.quiesced}}

    def load_state_dict(self, state, reshard=False):
        loc = state["local"]
        self.params[...] = loc["params"]
        self.step_count, self.samples = int(loc["step"]), int(loc["samples"])
        self.quiesced = int(loc["quiesced"])


@pytest.fixture
def fake_async():
    register(FakeAsync)
    yield FakeAsync.name
    REGISTRY.pop(FakeAsync.name, None)


@pytest.mark.parallel(nprocs=4)
def test_asynchronous_checkpoints_at_agreed_quiesced_points(fake_async, monkeypatch):
    base = shared_dir()
    steps, every = 60, 10
    for P, sub in sub_comms([1, 4]):
        if sub == MPI.COMM_NULL:
            continue
        out = os.path.join(base, f"async-{P}")
        sets = {"algo.name": fake_async, "run.steps": steps, "checkpoint.every": every,
                "checkpoint.keep_last": 0, "run.eval_every": 0}
        summ, state, ctx = train_once(sub, out, sets)
        files = sorted(list_checkpoints(os.path.join(out, "checkpoints")), key=lambda p: len(p))
        ok, msg = True, ""
        if sub.rank == 0:
            prev = 0
            files = sorted(files, key=lambda p: int(p.rsplit("-", 1)[1][:-3]))
            for k, path in enumerate(files, 1):
                with h5py.File(path, "r") as f:
                    s0 = int(f.attrs["step"])
                    for r in range(P):
                        g = f[f"ranks/{r}/algo"]
                        st = int(g["step"][0])
                        # every rank quiesced before each checkpoint, and its
                        # stored state is its own consistent state
                        ok &= int(g["quiesced"][0]) == k
                        ok &= bool(np.all(g["params"][()] == 1000 * r + st))
                        msg += f" {k}:r{r}:q{int(g['quiesced'][0])}:s{st}"
                    ok &= s0 == int(f["ranks/0/algo/step"][0]) and s0 >= prev + every
                    prev = s0
            ok &= len(files) >= 2
            msg += f" {[os.path.basename(p) for p in files]}"
        msg = sub.bcast(msg)
        assert_all(ok, f"async checkpoints inconsistent: {msg}", comm=sub)
        own = sub.allgather(ctx["algo"].step_count)
        assert_all(own == [steps * (1 if r == 0 else 10) for r in range(P)], f"budgets {own}", comm=sub)
        # resume from the first checkpoint: each rank gets its own step count back
        first = sub.bcast(files[0] if sub.rank == 0 else None)
        with h5py.File(first, "r") as f:
            saved = [int(f[f"ranks/{r}/algo/step"][0]) for r in range(P)]

        def hook(ctx):
            ctx["algo"].total_steps = 0     # stop right after the resume
        res = train_once(sub, os.path.join(base, f"async-res-{P}"), sets, resume=first, hook=hook)
        got = sub.allgather(res[2]["algo"].step_count)
        assert_all(got == saved, f"resumed steps {got} != saved {saved}", comm=sub)
        # a signal on the last rank: all ranks quiesce, checkpoint and stop
        def sig_hook(ctx):
            algo = ctx["algo"]
            step = algo.step

            def step_and_signal(shard):
                info = step(shard)
                if algo.step_count == 15 and sub.rank == sub.size - 1:
                    os.kill(os.getpid(), signal.SIGUSR1)
                return info
            algo.step = step_and_signal
        sig_out = os.path.join(base, f"async-sig-{P}")
        summ, state, ctx = train_once(sub, sig_out, {**sets, "checkpoint.every": 0}, hook=sig_hook)
        if sub.rank == 0:
            ck = list_checkpoints(os.path.join(sig_out, "checkpoints"))
            ok = summ["stopped_by"] == "signal" and len(ck) == 1 and not verify(ck[0])[2]
        else:
            ok = True
        # every rank stopped short of its own budget (steps on rank 0, 10 x
        # steps on the others): the signal, not the budget, ended the run
        ok &= ctx["algo"].quiesced == 1 and ctx["algo"].step_count < ctx["algo"].total_steps
        assert_all(ok, "async signal stop", comm=sub)
        # rank 0 cannot append its second record (ckpt-<k>'s, a full disk,
        # simulated): every rank stops with the same error, and no checkpoint
        # is written after ckpt-<k>
        appended = []

        def failing_append(fh, text):
            appended.append(text)
            return "cannot append (simulated)" if len(appended) > 1 else real_append(fh, text)
        real_append = reporting.try_append
        monkeypatch.setattr(reporting, "try_append", failing_append)   # Log.record calls it
        full_out = os.path.join(base, f"async-full-{P}")
        with pytest.raises(AgreedError, match=r"^cannot append \(simulated\); no newer checkpoint"):
            train_once(sub, full_out, sets)
        monkeypatch.undo()
        if sub.rank == 0:
            files = [os.path.basename(p) for p in
                     list_checkpoints(os.path.join(full_out, "checkpoints"))]
            lost = json.loads(appended[-1])
            ok = len(appended) == 2 and lost["kind"] == "checkpoint"
            ok &= files[0] == f"ckpt-{lost['step']}.h5"
            msg = f"{files} {appended}"
        else:
            ok, msg = True, ""
        assert_all(ok, f"a checkpoint followed the lost record: {sub.bcast(msg)}", comm=sub)


def quiescent_state(path, P):
    """'' if the checkpoint at `path` describes a consistent state with nothing
    in flight, else what is wrong. Parameter-server algorithms: the server's
    version = Σ pushes its clients sent = its count per source. Gossip: every
    push counted as sent by r to j was merged by j from r."""
    with h5py.File(path, "r") as f:
        algo = [f[f"ranks/{r}/algo"] for r in range(P)]
        if "from_rank" in algo[0]:
            sent = [int(a["pushes"][0]) if "pushes" in a else 0 for a in algo]
            got = algo[0]["from_rank"][()].tolist()
            version = int(algo[0]["version"][0])
            ok = version == sum(sent) == int(f.attrs["step"]) and got == sent
            return "" if ok else f"version {version}, sent {sent}, counted {got}"
        if "sent_to" in algo[0]:
            sent = np.array([a["sent_to"][()] for a in algo])
            got = np.array([a["recv_from"][()] for a in algo])
            return "" if np.array_equal(sent, got.T) else f"sent {sent.tolist()} merged {got.T.tolist()}"
    return "no consistency rule for this asynchronous algorithm: add one here"


ASYNC_NAMES = sorted(n for n, cls in REGISTRY.items() if not cls.synchronous)


@pytest.mark.parametrize("name", ASYNC_NAMES)
@pytest.mark.parallel(nprocs=4)
def test_every_asynchronous_algorithm_checkpoints_quiescent_states_and_resumes(name):
    """Every asynchronous algorithm in the registry, at the largest of 4, 2, 1
    ranks it accepts: each checkpoint is a consistent state with nothing in
    flight; a resume from the newest one runs to the end and its final
    counts are consistent too (a message left in flight would hang the
    drain, or be counted twice)."""
    base = shared_dir()
    failed = []
    P = world_for(name)
    for _, sub in sub_comms([P]):
        if sub == MPI.COMM_NULL:
            continue
        # slow enough steps that the agreement rounds complete mid-run
        sets = {**sweep_sets(name), "checkpoint.every": EVERY, "checkpoint.keep_last": 0,
                "run.eval_every": 0, "run.steps": 8 * N, "comm.emulate.compute": '"fixed"',
                "comm.emulate.compute_s": 0.003}
        a_out, b_out = (os.path.join(base, f"async-{name}-{x}") for x in "AB")
        train_once(sub, a_out, sets)
        files = sub.bcast(list_checkpoints(os.path.join(a_out, "checkpoints")))
        bad = [] if files else ["no checkpoint written"]
        res = train_once(sub, b_out, {**sets, "checkpoint.every": 10 ** 6},
                         resume=files[0] if files else None)
        sub.Barrier()
        if sub.rank == 0:
            bad += [f"{os.path.basename(p)}: {why}" for p in files
                    if (why := quiescent_state(p, P))]
            s = res[0]
            if "server_updates" in s:
                pushes = s["ps_pushes_sent_by_rank"]
                if pushes != s["ps_pushes_received_from_rank"] or sum(pushes) != s["server_updates"]:
                    bad.append(f"after resume: pushes {pushes} vs {s['ps_pushes_received_from_rank']}")
            if "gossip_weight_sum" in s and abs(s["gossip_weight_sum"] - 1.0) > 1e-12:
                bad.append(f"after resume: push-sum weight {s['gossip_weight_sum']}")
        failed = [f"{name} (P={P}): {b}" for b in sub.bcast(bad)]
    failed = COMM.bcast(failed, root=0)
    assert not failed, "asynchronous checkpoints:\n" + "\n".join(failed)
