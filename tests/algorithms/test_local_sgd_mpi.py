"""localsgd / diloco / palsgd under MPI against the serial float64 simulation
of docs/algorithms/local-sgd.md (tests/refs/local_sgd_ref.py), for every world size
1..5 in one launch of 5 ranks (sub-communicators).

Checked per step on every rank: x_k (1e-12 relative), x̄ identical on all
ranks bit for bit, the steps at which averaging happens (a sync one step
early or late diverges from the simulation), traffic booked = expected
allreduces x the Rabenseifner booking rule, consensus = mean_k x_k; the
equivalences H=1 localsgd = sgd, diloco(γ=1, μ=0) = localsgd, palsgd(p=0) =
diloco; and bit-identical continuation from state_dict().

The equivalences run as one scenario (see tests/helpers/mpi_scenario.py)
recording every rank's step-by-step gaps; each equivalence is a serial test.
"""
import copy
import json
import os
import tempfile

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import train
from mpidsgd.comm import costmodel as cm
from mpidsgd.checkpoint.format import flatten
from mpidsgd.topology import Topology
from refs.local_sgd_ref import (build, close, expected_allreduces, make_cfg, problem, run_steps,
                           shards, simulate)
from mpi_scenario import run_scenario
from mpiutil import assert_all, sub_comms

S = 17      # not a multiple of any H below: the run ends between two syncs

CASES = [
    ("localsgd", dict(H=1)),
    ("localsgd", dict(H=3, warmup_steps=2, momentum=0.5)),
    ("localsgd", dict(H=4, overlap=True, momentum=0.5)),
    ("diloco", dict(H=2, warmup_steps=1, momentum=0.5)),
    ("diloco", dict(H=3, overlap=True, outer_lr=0.5, outer_momentum=0.8)),
    ("diloco", dict(H=2, overlap=True, outer_schedule="cosine", momentum=0.5)),
    ("palsgd", dict(H=3, warmup_steps=2, p=0.3, mix_rate=0.5, momentum=0.5,
                    outer_schedule="cosine")),
    ("palsgd", dict(H=2, p=0.25, mix_rate=1.0, same_draws=True, overlap=True,
                    schedule={"schedule": "cosine", "schedule_warmup": 3})),
    ("palsgd", dict(H=1, p=0.4, mix_rate=2.0, overlap=True, momentum=0.3)),
]


def _cfg(name, kw, steps=S):
    kw = dict(kw)
    return make_cfg(name, steps, momentum=kw.pop("momentum", 0.0),
                    schedule=kw.pop("schedule", None), **kw)


@pytest.mark.parallel(nprocs=5)
def test_matches_serial_simulation_for_P_1_to_5():
    X, y, model, x0 = problem()
    for P, sub in sub_comms(range(1, 6)):
        if sub == MPI.COMM_NULL:
            continue
        r = sub.rank
        for name, kw in CASES:
            cfg = _cfg(name, kw)
            algo, ch = build(cfg, sub, model, x0, shards(X, y, P)[r])
            xs, xbars, mix = run_steps(algo, shards(X, y, P)[r], S)
            before_finish = algo.consensus_params().copy()
            algo.finish()
            decisions = sub.allgather(mix)
            sim_x, sim_bar, sim_final = simulate(cfg, P, x0, model, shards(X, y, P), decisions)
            tag = f"P={P} {name} {kw}"
            ok = all(close(xs[t], sim_x[t][r]) for t in range(S))
            assert_all(ok, f"{tag}: x_k differs from the simulation", comm=sub)
            # x̄: bit-identical on all ranks after every step, and as simulated
            bars = sub.allgather(np.array(xbars))
            ok = all(np.array_equal(bars[0], b) for b in bars)
            assert_all(ok, f"{tag}: x̄ differs between ranks", comm=sub)
            ok = all(close(xbars[t], sim_bar[t]) for t in range(S))
            assert_all(ok, f"{tag}: x̄ differs from the simulation", comm=sub)
            # finish lands a pending overlap sync; consensus = mean_k x_k
            ok = close(algo.params, sim_final[r])
            ok &= close(before_finish, sum(sim_x[-1]) / P)
            ok &= close(algo.consensus_params(), sum(sim_final) / P)
            assert_all(ok, f"{tag}: finish/consensus", comm=sub)
            # mixing: only palsgd, identical on all ranks with same_draws
            nmix = sum(sum(d) for d in decisions)
            ok = (nmix > 0) == (name == "palsgd")
            if kw.get("same_draws"):
                ok &= all(d == decisions[0] for d in decisions)
            assert_all(ok, f"{tag}: mixing decisions {decisions}", comm=sub)
            # traffic: one allreduce of n float64 per warm-up step and per sync
            nb, nm = cm.allreduce_booking(x0.size * 8, P)
            b, m = ch.counters.snapshot()
            want = expected_allreduces(cfg)
            ok = abs(b.get("train", 0.0) - want * nb) <= 1e-9 * (1 + want * nb)
            ok &= m.get("train", 0) == want * nm
            ok &= algo.syncs == want - min(cfg.algo.options.warmup_steps, S)
            assert_all(ok, f"{tag}: booked {b} {m}, expected {want} allreduces", comm=sub)


def gaps(a, b):
    """Per step [max |u - v|, 1 + max |v|] of two trajectories: close(u, v,
    tol) is gap <= tol * scale, bit-identical is gap == 0."""
    return [[float(np.max(np.abs(np.asarray(u) - np.asarray(v)))),
             1.0 + float(np.max(np.abs(np.asarray(v))))] for u, v in zip(a, b)]


def observe_presets(tmp):
    """Scenario on 5 ranks: for P = 1..5 every rank's step-by-step gaps
    between presets that should coincide (and one pair that should not)."""
    X, y, model, x0 = problem()
    seen = {}
    for P, sub in sub_comms(range(1, 6)):
        if sub == MPI.COMM_NULL:
            continue
        r = sub.rank

        def traj(cfg):
            algo, _ = build(cfg, sub, model, x0, shards(X, y, P)[r])
            xs = run_steps(algo, shards(X, y, P)[r], S)[0]
            algo.finish()        # no allreduce may stay in flight
            return xs
        o = {"h1_vs_sgd": [gaps(traj(make_cfg("localsgd", S, H=1, **extra)),
                                traj(make_cfg("sgd", S, **extra))) for extra in SGD_EXTRAS],
             "h2_vs_sgd": gaps(traj(make_cfg("localsgd", S, H=2)), traj(make_cfg("sgd", S)))[-1:],
             "diloco_vs_localsgd": [gaps(
                 traj(make_cfg("diloco", S, H=3, warmup_steps=2, momentum=0.5, outer_lr=1.0,
                               outer_momentum=0.0, **extra)),
                 traj(make_cfg("localsgd", S, H=3, warmup_steps=2, momentum=0.5, **extra)))
                 for extra in ({}, {"overlap": True})],
             "palsgd_vs_diloco": gaps(
                 traj(make_cfg("palsgd", S, H=3, p=0.0, momentum=0.5, optimizer="adamw")),
                 traj(make_cfg("diloco", S, H=3, momentum=0.5, optimizer="adamw")))}
        seen[str(P)] = {k: sub.allgather(v) for k, v in o.items()}
    return seen


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    return run_scenario(__file__, "observe_presets", 5, tmp_path_factory)


PS = [str(P) for P in range(1, 6)]
SGD_EXTRAS = ({}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True})


def all_close(per_rank, tol=1e-12):
    """close() at every step on every rank, from the recorded gaps."""
    return all(g <= tol * scale for steps in per_rank for g, scale in steps)


@pytest.mark.parametrize("P", PS)
def test_localsgd_with_H_1_is_sgd(presets, P):
    # averaged parameters each step = synchronous SGD; momentum too, as the
    # mean of the local heavy-ball/Nesterov buffers is linear
    for i, extra in enumerate(SGD_EXTRAS):
        assert all_close([rank[i] for rank in presets[P]["h1_vs_sgd"]]), f"{extra}"


@pytest.mark.parametrize("P", PS[1:])
def test_localsgd_with_H_2_is_not_sgd_once_ranks_see_different_data(presets, P):
    # the comparison above can fail
    assert not any(all_close([rank], 1e-6) for rank in presets[P]["h2_vs_sgd"])


@pytest.mark.parametrize("P", PS)
@pytest.mark.parametrize("overlap", [0, 1])
def test_diloco_with_outer_lr_1_and_no_momentum_is_localsgd(presets, P, overlap):
    assert all_close([rank[overlap] for rank in presets[P]["diloco_vs_localsgd"]])


@pytest.mark.parametrize("P", PS)
def test_palsgd_with_p_0_is_diloco_bit_for_bit(presets, P):
    assert all(g == 0.0 for steps in presets[P]["palsgd_vs_diloco"] for g, _ in steps)


RESUME_CASES = [
    ("palsgd", dict(H=3, warmup_steps=2, p=0.3, mix_rate=0.5, overlap=True, momentum=0.5,
                    outer_schedule="cosine")),
    ("diloco", dict(H=4, optimizer="adamw")),
    ("localsgd", dict(H=2, overlap=True, momentum=0.9)),
]


@pytest.mark.parallel(nprocs=5)
def test_state_dict_round_trip_continues_bit_identically():
    X, y, model, x0 = problem()
    for P, sub in sub_comms([1, 3, 5]):
        if sub == MPI.COMM_NULL:
            continue
        r = sub.rank
        for name, kw in RESUME_CASES:
            cfg = _cfg(name, kw, steps=20)
            H, T0 = cfg.algo.options.H, cfg.algo.options.warmup_steps
            # cuts: in warm-up, right after a sync started (pending with overlap),
            # one step later, mid-period
            for cut in sorted({1, T0 + H, T0 + H + 1, T0 + 2 * H - 1}):
                algo, _ = build(cfg, sub, model, x0, shards(X, y, P)[r])
                sh = shards(X, y, P)[r]
                run_steps(algo, sh, cut)
                state = copy.deepcopy(algo.state_dict())
                data_state = sh.state_dict()
                ref = run_steps(algo, sh, 20 - cut)
                algo.finish()
                ref_final = algo.params.copy()
                algo2, _ = build(cfg, sub, model, x0, shards(X, y, P)[r])
                fresh = algo2.state_dict()   # checkpoints check saved keys against these
                ok = all(set(fresh[part]) == set(state[part]) for part in ("shared", "local"))
                assert_all(ok, f"P={P} {name} cut={cut}: state keys vary", comm=sub)
                sh2 = shards(X, y, P)[r]
                sh2.load_state_dict(data_state)
                algo2.load_state_dict(state)
                got = run_steps(algo2, sh2, 20 - cut)
                algo2.finish()
                ok = all(np.array_equal(u, v) for u, v in zip(got[0], ref[0]))
                ok &= all(np.array_equal(u, v) for u, v in zip(got[1], ref[1]))
                ok &= got[2] == ref[2] and np.array_equal(algo2.params, ref_final)
                ok &= algo2.samples == algo.samples and algo2.syncs == algo.syncs
                assert_all(ok, f"P={P} {name} cut={cut}: resume differs", comm=sub)
                # shared state really is identical on every rank
                # nested sections (the outer optimizer) compared leaf by leaf
                flat = {k: np.asarray(v) for k, v in flatten(state["shared"]).items()}
                allf = sub.allgather(flat)
                ok = all(np.array_equal(allf[0][k], f[k]) for f in allf for k in flat)
                assert_all(ok, f"P={P} {name} cut={cut}: shared state differs", comm=sub)


def _train(comm, out, sets, resume=None):
    """One in-process `python -m mpidsgd.train` run on `comm`."""
    topo = Topology(comm)
    argv = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    argv += ["--set", f"run.out_dir={json.dumps(out)}"] + (["--resume", resume] if resume else [])
    args = train.parse_args(argv)
    cfg, ctx = train.setup(args, topo)
    summary = train.run(cfg, ctx, topo, args)
    algo = ctx["algo"]
    st = algo.state_dict()
    return summary, {f"{part}/{k}": np.array(v) for part in st for k, v in flatten(st[part]).items()}


@pytest.mark.parallel(nprocs=5)
def test_cli_checkpoint_with_sync_in_flight_resumes_bit_identically():
    """Through train.py and HDF5: checkpoint at step 7, right after the
    overlapped sync of step 6 started (T0 = 2, H = 5), resume, compare."""
    base = tempfile.mkdtemp(prefix="mpidsgd-local-") if MPI.COMM_WORLD.rank == 0 else None
    base = MPI.COMM_WORLD.bcast(base)
    sets = {"run.steps": 19, "run.eval_every": 5, "run.progress": "false", "run.seed": 4,
            "data.n_samples": 600, "data.n_test": 60, "data.n_features": 8,
            "data.n_classes": 3, "data.batch_size": 8, "model.hidden": "[6]",
            "algo.name": '"palsgd"', "algo.lr": 0.05, "algo.momentum": 0.9, "algo.H": 5,
            "algo.warmup_steps": 2, "algo.p": 0.3, "algo.mix_rate": 0.5,
            "algo.overlap": "true"}
    for P, sub in sub_comms([5]):
        if sub == MPI.COMM_NULL:
            continue
        a_out, b_out = os.path.join(base, "A"), os.path.join(base, "B")
        sa, a = _train(sub, a_out, {**sets, "checkpoint.every": 7, "checkpoint.keep_last": 0})
        ck = os.path.join(a_out, "checkpoints", "ckpt-7.h5")
        sb, b = _train(sub, b_out, sets, resume=ck)
        bad = [k for k in a if not np.array_equal(a[k], b[k])]
        assert_all(not bad and set(a) == set(b), f"state differs in {bad}", comm=sub)
        ok = True
        if sub.rank == 0:
            for key in ("final_test_accuracy", "final_train_loss", "samples_processed",
                        "bytes_sent_per_rank", "syncs"):
                ok &= sa[key] == sb[key]
        assert_all(ok, f"summaries differ: {sa} vs {sb}", comm=sub)


@pytest.mark.parallel(nprocs=2)
def test_emulated_iallreduce_is_charged_at_completion_not_at_start():
    """Overlap can only pay under emulation if a non-blocking allreduce's
    alpha-beta time runs while the caller works: Wait returns no earlier than
    start + predicted time, and starting it costs none of that time."""
    import time
    from mpidsgd.comm.channel import Channel, NetworkEmulation
    from mpidsgd.comm.dense import iallreduce_sum
    ch = Channel(MPI.COMM_WORLD, emulate=NetworkEmulation(alpha=0.02, beta=1e-6))
    buf = np.ones(1000)
    nb, nm = cm.allreduce_booking(8000, 2)
    predicted = cm.alpha_beta_time(nb, nm, 0.02, 1e-6)
    t0 = time.perf_counter()
    req = iallreduce_sum(buf, channel=ch)
    started = time.perf_counter()
    ok = t0 + predicted <= req.ready_at <= started + predicted
    ok &= ch.counters.emulated_s == pytest.approx(predicted)
    req.Wait()
    ok &= time.perf_counter() >= req.ready_at and np.all(buf == 2.0)
    assert_all(ok, f"ready_at {req.ready_at - t0:.4f} s after start, predicted {predicted:.4f}")
