"""Checkpoints under MPI, in-process: a launch of 4 ranks runs training at
P = 1, 2, 4 on sub-communicators (train.setup/run on a Topology of the sub-
communicator) and checks

- exact resume: N steps uninterrupted == s steps, checkpoint, resume to N
  (parameters, optimizer and algorithm state on every rank, every later
  metrics.jsonl record, summary byte and message counts), for `sgd` at
  P = 1, 2, 4 and for every synchronous algorithm in the registry;
- a signal on one rank: every rank stops at the same step, checkpoints, and
  `--resume auto` continues bit-identically;
- world-size changes: refused (exit 2) unless checkpoint.allow_reshard;
- damaged and incompatible files: exit 2 with one line, `auto` skips damage.

One claim per test; each test is one launch of 4 ranks (2 for the time
limit).

Crafted files are in test_checkpoint_crafted_mpi.py, asynchronous
algorithms in test_checkpoint_async_mpi.py. Assertions are collective: a
failure on one rank fails every rank.
"""
import os
import signal

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.algorithms import REGISTRY
from mpidsgd.checkpoint.format import list_checkpoints, read_group, verify
from mpiutil import assert_all, sub_comms
from resume_check import (EVERY, N, check_exact, expect_exit2, records, resume_matches, same_state,
                          shared_dir, sweep_sets, train_once, world_for)

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


def uninterrupted(sub, base, P):
    """Run C: no checkpoints at all (the reference of every resume below)."""
    c_out = os.path.join(base, f"sgd-{P}-C")
    return c_out, train_once(sub, c_out)


@pytest.mark.parallel(nprocs=4)
def test_sgd_checkpoint_and_resume_are_bit_identical_for_P_1_2_4():
    # C: no checkpoints; A: checkpoints (must not perturb); B: resumed from A
    base = shared_dir()
    for P, sub in sub_comms([1, 2, 4]):
        if sub == MPI.COMM_NULL:
            continue
        c_out, c = uninterrupted(sub, base, P)
        a_out, a = resume_matches(sub, base, "sgd", {}, str(P))
        check_exact(sub, c_out, c, a_out, a, 0, f"sgd P={P}: checkpointing changed the run")


@pytest.mark.parallel(nprocs=4)
def test_a_signal_on_one_rank_stops_every_rank_at_one_step_with_a_checkpoint_for_P_2_4():
    base = shared_dir()
    for P, sub in sub_comms([2, 4]):
        if sub == MPI.COMM_NULL:
            continue
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


@pytest.mark.parallel(nprocs=4)
def test_resume_auto_after_a_signal_stop_equals_the_uninterrupted_run_for_P_2_4():
    # --resume auto into the same folder equals C, and metrics.jsonl reads as
    # one uninterrupted run
    base = shared_dir()
    for P, sub in sub_comms([2, 4]):
        if sub == MPI.COMM_NULL:
            continue
        c_out, c = uninterrupted(sub, base, P)
        s_out = os.path.join(base, f"sig-{P}")
        signum = signal.SIGUSR1 if P == 2 else signal.SIGTERM
        train_once(sub, s_out, hook=signal_hook(sub, 9, signum))
        res = train_once(sub, s_out, resume="auto")
        check_exact(sub, c_out, c, s_out, res, 0, f"signal P={P}")


@pytest.mark.parallel(nprocs=2)
def test_time_limit_stops_with_a_checkpoint_and_resume_equals_the_uninterrupted_run():
    # the same agreed stop as a signal, wherever it falls
    base = shared_dir()
    c_out, c = uninterrupted(COMM, base, 2)
    t_out = os.path.join(base, "time-2")
    summ, state, ctx = train_once(COMM, t_out, {"run.time_limit_s": 0.05,
                                                "comm.emulate.compute": '"fixed"',
                                                "comm.emulate.compute_s": 0.01})
    ok = summ["stopped_by"] == "time_limit" and summ["steps"] < N if COMM.rank == 0 else True
    assert_all(ok, "time limit did not stop the run")
    res = train_once(COMM, t_out, resume="auto")
    check_exact(COMM, c_out, c, t_out, res, 0, "time limit P=2")


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


def four_rank_run(base):
    """sgd on all 4 ranks with checkpoints every EVERY steps:
    (result, out folder, ckpt-EVERY, ckpt-2*EVERY)."""
    out4 = os.path.join(base, "w4")
    ref = train_once(COMM, out4, {"checkpoint.every": EVERY, "checkpoint.keep_last": 0})
    ck = os.path.join(out4, "checkpoints", f"ckpt-{EVERY}.h5")
    return ref, out4, ck, os.path.join(out4, "checkpoints", f"ckpt-{2 * EVERY}.h5")


def on_two_ranks():
    """The sub-communicator of ranks 0 and 1 (None on the others)."""
    for _, sub in sub_comms([2]):
        if sub != MPI.COMM_NULL:
            yield sub


@pytest.mark.parallel(nprocs=4)
def test_another_world_size_is_refused_without_allow_reshard(capsys):
    base = shared_dir()
    _, _, ck, _ = four_rank_run(base)
    for sub in on_two_ranks():
        expect_exit2(sub, capsys, os.path.join(base, "w2"), {}, ck,
                     ["4 ranks", "this run has 2", "allow_reshard"])


@pytest.mark.parallel(nprocs=4)
def test_reshard_restores_shared_state_and_restarts_per_rank_state():
    # shared state restored, per-rank state reset, data at the same epoch fraction
    base = shared_dir()
    _, _, ck, _ = four_rank_run(base)
    for sub in on_two_ranks():
        summ, state, ctx = train_once(sub, os.path.join(base, "w2"),
                                      {"checkpoint.allow_reshard": "true", "run.steps": EVERY},
                                      resume=ck)
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


@pytest.mark.parallel(nprocs=4)
def test_a_file_of_another_model_or_algorithm_is_one_line_exit_2(capsys):
    base = shared_dir()
    _, _, ck, _ = four_rank_run(base)
    for sub in on_two_ranks():
        out2 = os.path.join(base, "w2")
        expect_exit2(sub, capsys, out2, {"model.hidden": "[9]", "checkpoint.allow_reshard": "true"},
                     ck, ["another model", "model.hidden = [8] in the checkpoint, [9]"])
        expect_exit2(sub, capsys, out2, {"algo.momentum": 0.0, "checkpoint.allow_reshard": "true"},
                     ck, ["missing", "momentum_buf"])
        other = next(n for n in sorted(REGISTRY) if n != "sgd" and REGISTRY[n].synchronous)
        expect_exit2(sub, capsys, out2, {"algo.name": other, "algo.momentum": 0.0}, ck,
                     ["algorithm 'sgd'", f"algo.name = '{other}'"])


def damaged_run(base):
    """four_rank_run with its second checkpoint damaged (the first intact)."""
    ref, out4, ck, ck2 = four_rank_run(base)
    if COMM.rank == 0:
        damage(ck2)
        assert verify(ck2)[2] and not verify(ck)[2]
    COMM.Barrier()
    return ref, out4, ck, ck2


@pytest.mark.parallel(nprocs=4)
def test_a_damaged_file_named_by_resume_is_one_line_exit_2(capsys):
    base = shared_dir()
    _, _, _, ck2 = damaged_run(base)
    expect_exit2(COMM, capsys, os.path.join(base, "d"), {}, ck2, ["damaged", f"ckpt-{2 * EVERY}"])


@pytest.mark.parallel(nprocs=4)
def test_resume_auto_skips_a_damaged_file_and_resumes_from_the_next_newest(capsys):
    # auto into the original folder skips ckpt-14 and resumes from ckpt-7
    base = shared_dir()
    ref, out4, ck, ck2 = damaged_run(base)
    capsys.readouterr()
    ref_records = records(out4) if COMM.rank == 0 else None
    res = train_once(COMM, out4, {"checkpoint.every": EVERY, "checkpoint.keep_last": 0},
                     resume="auto")
    out = capsys.readouterr().out
    ok = not same_state(ref[1], res[1])
    if COMM.rank == 0:
        ok &= "skipping damaged checkpoint" in out and f"resumed from {ck} at step {EVERY}" in out
        ok &= records(out4) == ref_records and not verify(ck2)[2]   # rewritten, valid again
    assert_all(ok, f"auto did not skip the damaged file: {out[-500:]}")
