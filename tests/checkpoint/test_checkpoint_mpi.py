"""Checkpoints under MPI, in-process: one launch of 4 ranks runs training at
P = 1, 2, 4 on sub-communicators (train.setup/run on a Topology of the sub-
communicator) and checks

- exact resume: N steps uninterrupted == s steps, checkpoint, resume to N
  (parameters, optimizer and algorithm state on every rank, every later
  metrics.jsonl record, summary byte and message counts), for `sgd` at
  P = 1, 2, 4 and for every synchronous algorithm in the registry;
- a signal on one rank: every rank stops at the same step, checkpoints, and
  `--resume auto` continues bit-identically;
- world-size changes: refused (exit 2) unless checkpoint.allow_reshard;
- damaged and incompatible files: exit 2 with one line, `auto` skips damage;
- another architecture with the same parameter count, crafted absurd values
  (2^62 steps, negative counts, an array for a count, bytes for an integer,
  wrong-shaped byte counters, NaN parameters): exit 2, one line naming the
  field, the same on every rank;
- asynchronous algorithms (a fake one defined here): checkpoints only at
  agreed points after every rank quiesced, per-rank step counts restored.

Assertions are collective: a failure on one rank fails every rank.
"""
import json
import os
import signal
import time

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C, reporting, train

from mpidsgd.catalog import load_config, validate
from mpidsgd.algorithms import REGISTRY
from mpidsgd.algorithms.base import Algorithm, StepInfo, register
from mpidsgd.checkpoint.format import list_checkpoints, read_group, verify
from mpidsgd.errors import AgreedError
from mpiutil import assert_all, sub_comms
from resume_check import (BASE, EVERY, N, check_exact, records, resume_matches, same_state,
                          shared_dir, train_once)

COMM = MPI.COMM_WORLD


def signal_hook(sub, at, signum):
    """Make the last rank of `sub` signal itself after step `at`."""
    def hook(ctx):
        algo = ctx["algo"]
        step = algo.step

        def step_and_signal(shard):
            info = step(shard)
            if algo.step_count == at and sub.rank == sub.size - 1:
                os.kill(os.getpid(), signum)
            return info
        algo.step = step_and_signal
    return hook


@pytest.mark.parallel(nprocs=4)
def test_sgd_resume_and_signal_stop_are_bit_identical_for_P_1_2_4():
    base = shared_dir()
    for P, sub in sub_comms([1, 2, 4]):
        if sub == MPI.COMM_NULL:
            continue
        # C: no checkpoints at all; A: checkpoints (must not perturb); B: resumed
        c_out = os.path.join(base, f"sgd-{P}-C")
        c = train_once(sub, c_out)
        a_out, a = resume_matches(sub, base, "sgd", {}, str(P))
        check_exact(sub, c_out, c, a_out, a, 0, f"sgd P={P}: checkpointing changed the run")
        if P == 1:
            continue
        # a signal on one rank: every rank stops at the same step boundary and
        # checkpoints; --resume auto into the same folder then equals C, and
        # metrics.jsonl reads as one uninterrupted run
        s_out = os.path.join(base, f"sig-{P}")
        signum = signal.SIGUSR1 if P == 2 else signal.SIGTERM
        summ, state, ctx = train_once(sub, s_out, hook=signal_hook(sub, 9, signum))
        steps = sub.allgather(ctx["algo"].step_count)
        assert_all(len(set(steps)) == 1 and 9 < steps[0] < N, f"stopped at {steps}", comm=sub)
        stopped = steps[0]
        if sub.rank == 0:
            ok = summ["stopped_by"] == "signal" and summ["steps"] == stopped
            ok &= list_checkpoints(os.path.join(s_out, "checkpoints"))[0].endswith(f"ckpt-{stopped}.h5")
        else:
            ok = True
        assert_all(ok, "signal stop did not checkpoint", comm=sub)
        res = train_once(sub, s_out, resume="auto")
        check_exact(sub, c_out, c, s_out, res, 0, f"signal P={P}")
        if P != 2:
            continue
        # the time limit: the same agreed stop with a checkpoint, wherever it falls
        t_out = os.path.join(base, f"time-{P}")
        summ, state, ctx = train_once(sub, t_out, {"run.time_limit_s": 0.05,
                                                   "comm.emulate.compute": '"fixed"',
                                                   "comm.emulate.compute_s": 0.01})
        if sub.rank == 0:
            ok = summ["stopped_by"] == "time_limit" and summ["steps"] < N
        else:
            ok = True
        assert_all(ok, "time limit did not stop the run", comm=sub)
        res = train_once(sub, t_out, resume="auto")
        check_exact(sub, c_out, c, t_out, res, 0, f"time limit P={P}")


def sweep_sets(name):
    """The algorithm's own defaults (no momentum: some algorithms refuse it)."""
    return {"algo.name": name, "algo.momentum": 0.0}


def world_for(name):
    """The largest of 4, 2, 1 ranks the algorithm accepts with its defaults."""
    items = {**BASE, **sweep_sets(name)}
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()], base=train.QUICKSTART)
    for P in (4, 2, 1):
        try:
            validate(cfg, P)
            return P
        except C.ConfigError:
            continue
    pytest.fail(f"{name} runs at none of 4, 2, 1 ranks with its defaults")


@pytest.mark.parallel(nprocs=4)
def test_every_synchronous_algorithm_resumes_bit_identically():
    """Every synchronous algorithm registered when the test runs (those added
    later included), each at the largest of 4, 2, 1 ranks it accepts; one
    launch for all, the failures listed together."""
    base = shared_dir()
    failed = []
    for name in sorted(n for n, cls in REGISTRY.items() if cls.synchronous):
        P = world_for(name)
        for _, sub in sub_comms([P]):
            if sub == MPI.COMM_NULL:
                continue
            try:
                resume_matches(sub, base, name, sweep_sets(name), str(P))
            except AssertionError as exc:
                failed.append(f"{name} (P={P}): {str(exc)[:400]}")
        failed = COMM.bcast(failed)
    assert not failed, "not bit-identical after resume:\n" + "\n".join(failed)


def damage(path, dataset="shared/params"):
    """Flip bytes inside a dataset's stored chunk (rank 0)."""
    with h5py.File(path, "r") as f:
        off = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(off + 8)
        b = bytearray(fh.read(4))
        fh.seek(off + 8)
        fh.write(bytes(x ^ 0xFF for x in b))


def expect_exit2(sub, capsys, out, sets, resume, words):
    with pytest.raises(SystemExit) as exc:
        train_once(sub, out, sets, resume=resume)
    err = capsys.readouterr().err.strip().splitlines()
    if sub.rank == 0:
        ok = exc.value.code == 2 and len(err) == 1 and all(w in err[0] for w in words)
    else:
        ok = exc.value.code == 2 and not err
    assert_all(ok, f"expected one line with {words}, got {err} (code {exc.value.code})", comm=sub)


@pytest.mark.parallel(nprocs=4)
def test_world_size_change_damage_and_incompatible_files(capsys):
    base = shared_dir()
    out4 = os.path.join(base, "w4")
    ref = train_once(COMM, out4, {"checkpoint.every": EVERY, "checkpoint.keep_last": 0})
    ck = os.path.join(out4, "checkpoints", f"ckpt-{EVERY}.h5")
    ck2 = os.path.join(out4, "checkpoints", f"ckpt-{2 * EVERY}.h5")
    for P, sub in sub_comms([2]):
        if sub == MPI.COMM_NULL:
            continue
        out2 = os.path.join(base, "w2")
        expect_exit2(sub, capsys, out2, {}, ck, ["4 ranks", "this run has 2", "allow_reshard"])
        # allowed: shared state restored, per-rank state reset, data at the same epoch fraction
        summ, state, ctx = train_once(sub, out2, {"checkpoint.allow_reshard": "true",
                                                  "run.steps": EVERY}, resume=ck)
        with h5py.File(ck, "r") as f:
            saved = read_group(f["shared"])
            pos4, spe4 = int(f["ranks/0/data/pos"][0]), int(f["ranks/0/data/steps_per_epoch"][0])
            ep4 = int(f["ranks/0/data/epoch"][0])
        sh = ctx["data"].train
        ok = np.array_equal(state["shared/params"], saved["params"])
        ok &= np.array_equal(state["shared/opt/momentum_buf"], saved["opt/momentum_buf"])
        ok &= state["local/samples"] == 0 and ctx["algo"].step_count == EVERY
        ok &= sh.epoch == ep4 and sh.pos == pos4 * sh.steps_per_epoch // spe4
        assert_all(ok, "reshard did not restore shared state / reset local state", comm=sub)
        capsys.readouterr()
        # incompatible: another model shape, another algorithm
        expect_exit2(sub, capsys, out2, {"model.hidden": "[9]", "checkpoint.allow_reshard": "true"},
                     ck, ["another model", "model.hidden = [8] in the checkpoint, [9]"])
        expect_exit2(sub, capsys, out2, {"algo.momentum": 0.0, "checkpoint.allow_reshard": "true"},
                     ck, ["missing", "momentum_buf"])
        other = next(n for n in sorted(REGISTRY) if n != "sgd" and REGISTRY[n].synchronous)
        expect_exit2(sub, capsys, out2, {"algo.name": other, "algo.momentum": 0.0}, ck,
                     ["algorithm 'sgd'", f"algo.name = '{other}'"])
    COMM.Barrier()
    # damaged: explicit FILE exits 2; auto skips it with a warning and takes the next newest
    if COMM.rank == 0:
        damage(ck2)
        assert verify(ck2)[2] and not verify(ck)[2]
    COMM.Barrier()
    expect_exit2(COMM, capsys, os.path.join(base, "d"), {}, ck2, ["damaged", f"ckpt-{2 * EVERY}"])
    # auto into the original folder skips ckpt-14 and resumes from ckpt-7
    ref_records = records(out4) if COMM.rank == 0 else None
    res = train_once(COMM, out4, {"checkpoint.every": EVERY, "checkpoint.keep_last": 0},
                     resume="auto")
    out = capsys.readouterr().out
    ok = not same_state(ref[1], res[1])
    if COMM.rank == 0:
        ok &= "skipping damaged checkpoint" in out and f"resumed from {ck} at step {EVERY}" in out
        ok &= records(out4) == ref_records and not verify(ck2)[2]   # rewritten, valid again
    assert_all(ok, f"auto did not skip the damaged file: {out[-500:]}")


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
        ok &= ctx["algo"].quiesced == 1 and ctx["algo"].step_count < steps
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


# -- files that do not fit the run: another architecture, crafted values --------------
def craft(src, dst, edit):
    """Rank 0: copy checkpoint `src` to `dst` and apply `edit(h5file)`."""
    import shutil
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)


def set_value(name, value):
    """An edit that stores `value` as dataset `name`, with its checksum, as
    the writer would (kind and shape attributes from the value)."""
    from mpidsgd.checkpoint.format import encode, write_array

    def edit(f):
        parent, key = name.rsplit("/", 1)
        del f[parent][key]
        write_array(f[parent], key, *encode(value))
    return edit


def set_raw(name, arr, kind):
    """An edit that stores raw `arr` under `name` with the `kind` attribute."""
    def edit(f):
        parent, key = name.rsplit("/", 1)
        del f[parent][key]
        f[parent].create_dataset(key, data=arr, fletcher32=True).attrs["kind"] = kind
    return edit


def set_attr(key, value):
    def edit(f):
        f.attrs[key] = value
    return edit


def set_element(name, index, value):
    def edit(f):
        f[name][index] = value
    return edit


CRAFTED = [   # (edit, words of the one error line)
    (set_attr("step", 2 ** 62), ["attribute step is 4611686018427387904", "< 2^53"]),
    (set_attr("step", -3), ["attribute step is -3", ">= 0"]),
    (set_attr("epoch", 2.0 ** 62), ["attribute epoch", "< 2^53"]),
    (set_attr("step", np.bytes_(b"14")), ["attribute step is a str", "expected int"]),
    (set_value("shared/step", -1), ["/shared/step is -1", ">= 0"]),
    (set_value("ranks/0/data/epoch", np.int64(2 ** 62)), ["/ranks/0/data/epoch", "< 2^53"]),
    (set_value("ranks/2/train/loss_n", -5), ["/ranks/2/train/loss_n is -5", ">= 0"]),
    (set_value("ranks/2/train/loss_n", 10 ** 6), ["/ranks/2/train/loss_n", "more than the 14 steps"]),
    (set_value("ranks/1/algo/samples", np.arange(3)), ["/ranks/1/algo/samples is an array",
                                                       "expected int"]),
    (set_raw("ranks/1/algo/samples", np.array([b"12"]), "int"), ["/ranks/1/algo/samples",
                                                               "cannot hold an int"]),
    (set_value("ranks/3/comm/train", np.zeros(3)), ["/ranks/3/comm/train has shape (3,)",
                                                    "expected (2,)"]),
    (set_value("ranks/3/comm/train", np.array([-1.0, 2.0])), ["/ranks/3/comm/train", ">= 0"]),
    (set_element("shared/params", 0, np.nan), ["/shared/params holds non-finite values"]),
    # nested state (the optimizer's section) is checked like any other value
    (set_value("shared/opt/momentum_buf", np.zeros(3, np.float32)),
     ["/shared/opt/momentum_buf has shape (3,)", "expected (63,)"]),
    (set_element("shared/opt/momentum_buf", 2, np.inf),
     ["/shared/opt/momentum_buf holds non-finite"]),
    (set_value("ranks/0/train/loss_acc", float("inf")), ["/ranks/0/train/loss_acc is not finite"]),
]


def trained_h5(base):
    """A 4-rank run of model.hidden = [5] with checkpoints at 7 and 14."""
    out = os.path.join(base, "h5")
    train_once(COMM, out, {"model.hidden": "[5]", "checkpoint.every": EVERY,
                           "checkpoint.keep_last": 0})
    return os.path.join(out, "checkpoints", f"ckpt-{2 * EVERY}.h5")


@pytest.mark.parallel(nprocs=4)
def test_another_architecture_with_the_same_parameter_count_exits_2(capsys):
    """model.hidden [5] and [4, 3] both have 63 parameters at 8 features and 3
    classes, as have 8 features / 3 classes and 2 features / 8 classes: the
    [model] section, then the layout of every view, tells them apart."""
    base = shared_dir()
    ck = trained_h5(base)
    capsys.readouterr()
    expect_exit2(COMM, capsys, os.path.join(base, "x"), {"model.hidden": "[4, 3]"}, ck,
                 ["another model", "model.hidden = [5] in the checkpoint, [4, 3] in this run"])
    expect_exit2(COMM, capsys, os.path.join(base, "x"),
                 {"model.hidden": "[5]", "data.n_features": 2, "data.n_classes": 8}, ck,
                 ["another model layout", "W0(8, 5)", "in the checkpoint, W0(2, 5)"])


@pytest.mark.parallel(nprocs=4)
def test_crafted_absurd_values_exit_2_naming_the_field(capsys):
    """One line naming the field, the same on every rank (only the rank that
    owns /ranks/<r> sees a per-rank problem)."""
    base = shared_dir()
    ck = trained_h5(base)
    capsys.readouterr()
    for i, (edit, words) in enumerate(CRAFTED):
        bad = os.path.join(base, f"crafted-{i}.h5")
        if COMM.rank == 0:
            craft(ck, bad, edit)
        COMM.Barrier()
        expect_exit2(COMM, capsys, os.path.join(base, "x"), {"model.hidden": "[5]"}, bad,
                     [bad] + words)


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
