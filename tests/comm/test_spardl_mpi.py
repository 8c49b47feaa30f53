"""SparDL collective under MPI against the plain serial simulation of SparDL
(tests/refs/spardl_ref.py), plus six properties of SparDL:

1 identical results on all ranks; density 1 (d = 1) is the dense mean, E = 0
2 conservation of gradient mass; off the final support E_new = g + E_old exactly
3 exactly P' k_b selections; the round-i SRS message holds s_i k_b entries
4 counted bytes and messages per rank equal comm/costmodel.spardl exactly
5 batched rounds = one block per exchange (results and residuals)
6 k_b clamps to >= 1; padding never leaks (n not divisible by P)

One 8-rank launch covers P = 1..8 (sub-communicators) and teams (8, 2),
(8, 4), (6, 3), (4, 2) with both SAGs; one 12-rank launch covers P = 11 and
teams (12, 3), (12, 4), (12, 2).

The spardl algorithm (one 4-rank scenario, see tests/helpers/mpi_scenario.py,
each claim a test on its observations): density 1 is sgd; parameters agree
across ranks while residuals stay rank-local; resuming from a state_dict
continues bit for bit."""
import copy
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.comm import costmodel as cm
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.spardl import SparDL
from mpidsgd.comm.spar_reduce_scatter import srs_schedule
from mpi_scenario import allclose_excess, rank_hashes, run_scenario
from mpiutil import assert_all, sub_comms
from refs.spardl_ref import simulate

STEPS = 2


def gradients(seed, P, n, dtype, steps=STEPS, zeros=0.0):
    """Every rank's gradients for every step, from one seed (all ranks agree);
    a share `zeros` of them exactly 0, so that zeros get selected."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((P, n)) * (rng.random((P, n)) >= zeros)).astype(dtype)
            for _ in range(steps)]


def run_case(sub, n, density, dtype, teams=1, sag="bruck", batched=True, seed=0, unbatched=False,
             zeros=0.0):
    """STEPS SparDL steps on `sub` vs the serial simulation; returns
    (ok, reasons, outs, residuals) for this rank."""
    P, q = sub.size, sub.rank
    ch = Channel(sub)
    sd = SparDL(n, dtype, density, channel=ch, teams=teams, sag=sag, batched=batched)
    Gs = gradients(seed + 1000 * P + n, P, n, dtype, zeros=zeros)
    E_ref = np.zeros((P, n), dtype)
    h_ref = {r: max(1, sd.k_b // teams) for r in range(P // teams)}
    ok, why, outs, ress = True, [], [], []
    tag = f"P={P} n={n} dens={density} {np.dtype(dtype).name} d={teams} {sag} batched={batched}"
    for step, G in enumerate(Gs):
        ref = simulate(G, E_ref, density, teams, sag, h_ref)
        E_old = sd.residual().copy()
        b0, m0 = ch.counters.snapshot()
        h_used = sd.h
        out = np.full(n, np.nan, dtype)
        sd.allreduce(G[q].copy(), out=out)
        b1, m1 = ch.counters.snapshot()
        E_new = sd.residual()
        outs.append(out.copy())
        ress.append(E_new.copy())

        def check(cond, what):
            nonlocal ok
            if not cond:
                ok = False
                why.append(f"{tag} step {step}: {what}")
        # the serial simulation, bit for bit
        check(np.array_equal(out, ref["out"]), "result differs from the serial simulation")
        check(np.array_equal(E_new, ref["E"][q]), "residual differs from the serial simulation")
        check(not sd.E[n:].any() and not ref["pad"].any(), "padding of E not zero")
        check(np.array_equal(sd.support(padded=True), ref["support"]), "support differs")
        # (1) identical on all ranks
        allout = sub.allgather(out)
        check(all(np.array_equal(allout[0], o) for o in allout), "results differ across ranks")
        # (2) conservation and the off-support rule
        Es = np.array(sub.allgather(E_new.copy()))
        Eo = np.array(sub.allgather(E_old))
        lhs = Es.astype(np.float64).sum(0) + P * out.astype(np.float64)
        rhs = (G.astype(np.float64) + Eo).sum(0)
        eps = np.finfo(dtype).eps
        scale = np.abs(G).max() + np.abs(Eo).max()
        check(np.abs(lhs - rhs).max() <= 8 * P * eps * scale, "gradient mass not conserved")
        off = np.setdiff1d(np.arange(n), sd.support())
        check(np.array_equal(E_new[off], (G[q] + E_old)[off]), "off-support residual != g + E_old")
        # (3) selections and SRS message sizes
        pt = P // teams
        check(sd.last["selected"] == (pt * sd.k_b if teams == 1 else ref["support"].size),
              f"selected {sd.last['selected']} != P' k_b")
        want = [s * sd.k_b for _, s in srs_schedule(pt)]
        got = sd.last["srs_entries"]
        check((got == want) if batched else (sum(got) == sum(want) and set(got) <= {sd.k_b}),
              f"SRS entries {got} != {want}")
        if teams > 1 and sag == "bruck":
            check(sd.last["union"] == ref["union"][q % pt], "B-SAG union size differs")
        # (4) counted bytes and messages = cost model
        nb = b1.get("train", 0) - b0.get("train", 0)
        nm = m1.get("train", 0) - m0.get("train", 0)
        pred = cm.spardl(n, np.dtype(dtype).itemsize, P, density, teams=teams, sag=sag,
                         h=h_used, batched=batched)
        check((nb, nm) == pred, f"counted {(nb, nm)} != predicted {pred}")
        if teams == 1 and batched:
            check(nb == 2 * sd.k_b * (P - 1) * (4 + np.dtype(dtype).itemsize)
                  and nm == 2 * cm.log2ceil(P), "d = 1 bytes/messages off the cost formula")
        # (1) density 1 with d = 1 (or R-SAG, which keeps every entry): dense mean, E = 0
        if density == 1.0 and (teams == 1 or sag == "recursive"):
            dense = (G.astype(np.float64) + Eo).mean(0)
            check(np.allclose(out, dense, rtol=4 * P * eps, atol=4 * P * eps * scale),
                  "density 1 is not the dense mean")
            check(not E_new.any(), "density 1 leaves a residual")
        E_ref = ref["E"]
        h_ref = ref["h"] if teams > 1 and sag == "bruck" else h_ref
        if teams > 1 and sag == "bruck":
            check(sd.h == h_ref[q % pt], f"B-SAG h {sd.h} != {h_ref[q % pt]}")
    sd.free()
    return ok, why, outs, ress


def check_cases(sub, cases):
    ok, why = True, []
    for kw in cases:
        good, reasons, outs, ress = run_case(sub, **kw)
        ok &= good
        why += reasons
        if kw.get("unbatched"):
            # (5) one block per exchange gives the same numbers
            _, reasons2, outs2, ress2 = run_case(sub, **{**kw, "batched": False})
            same = all(np.array_equal(a, b) for a, b in zip(outs + ress, outs2 + ress2))
            ok &= same and not reasons2
            why += reasons2 + ([] if same else [f"{kw}: unbatched differs"])
    assert_all(ok, "; ".join(why[:6]), comm=sub)


# unbatched=True: also run one block per exchange and compare (spec test 5)
D1_CASES = [dict(n=37, density=1.0, dtype=np.float64),       # padding: 37 = 8*5 - 3
            dict(n=301, density=0.05, dtype=np.float64, unbatched=True),
            dict(n=301, density=0.2, dtype=np.float32, zeros=0.9),   # zeros selected
            dict(n=53, density=1e-4, dtype=np.float32)]      # k_b clamps to 1


@pytest.mark.parallel(nprocs=8)
def test_spardl_d1_for_P_1_to_8_and_teams_against_serial_simulation():
    for P, sub in sub_comms(range(1, 9)):
        if sub != MPI.COMM_NULL:
            check_cases(sub, D1_CASES)
    team_cases = {8: [(2, "bruck"), (4, "bruck"), (2, "recursive"), (4, "recursive"), (8, "bruck")],
                  6: [(3, "bruck"), (2, "recursive")], 4: [(2, "bruck"), (4, "recursive")]}
    for P, sub in sub_comms(sorted(team_cases)):
        if sub == MPI.COMM_NULL:
            continue
        cases = [dict(n=n, density=dens, dtype=dt, teams=d, sag=sag)
                 for d, sag in team_cases[P]
                 for n, dens, dt in [(301, 0.1, np.float64), (45, 1.0, np.float32)]]
        check_cases(sub, cases)


@pytest.mark.parallel(nprocs=12)
def test_spardl_P11_and_twelve_ranks_in_teams():
    for P, sub in sub_comms([11, 12]):
        if sub == MPI.COMM_NULL:
            continue
        if P == 11:
            # n < P: six of the eleven blocks are all padding
            check_cases(sub, D1_CASES[:3] + [dict(n=5, density=0.5, dtype=np.float64,
                                                  unbatched=True)])
        else:
            check_cases(sub, [dict(n=301, density=0.1, dtype=np.float64, teams=3, sag="bruck"),
                              dict(n=301, density=0.1, dtype=np.float32, teams=4, sag="recursive"),
                              dict(n=97, density=1.0, dtype=np.float64, teams=2, sag="recursive")])


# ---------------------------------------------------------------- the algorithm

def build(sub, algo, steps, *sets):
    from mpidsgd.catalog import load_config
    from mpidsgd.topology import Topology
    from mpidsgd.train import build as build_run
    cfg = load_config(None, [f"algo.name='{algo}'", f"run.steps={steps}", "data.n_samples=1024",
                        "data.n_test=64", "data.n_features=8", "data.n_classes=3",
                        "data.batch_size=16", "model.hidden=[16]", "algo.lr=0.1",
                        "algo.momentum=0.9", "algo.weight_decay=1e-3", "run.dtype='float64'",
                        *sets])
    return build_run(cfg, Topology(sub))


def train(ctx, steps):
    for _ in range(steps):
        ctx["algo"].step(ctx["data"].train)
    return ctx["algo"]


def observe_sparse_run(comm, dense, teams, sag):
    """6 steps of spardl at density 0.05, and a run resumed from the
    state_dict at step 3, with every rank's figures."""
    opts = ["algo.density=0.05", f"algo.teams={teams}", f"algo.sag='{sag}'",
            "algo.warmup_dense_steps=1", "algo.nesterov=true"]
    a = train(build(comm, "spardl", 6, *opts), 6)
    b = train(build(comm, "spardl", 6, *opts), 3)
    state = copy.deepcopy(b.state_dict())      # nested sections (the optimizer's) copied too
    ctx = build(comm, "spardl", 6, *opts)
    c = ctx["algo"]
    c.load_state_dict(state)
    for _ in range(3):                      # replay the data order of the first 3 steps
        ctx["data"].train.next_batch()
    train(ctx, 3)
    E = a.sparse.residual()
    return {"params": rank_hashes(a.params, comm), "residual": rank_hashes(E, comm),
            "residual_nonzeros": comm.allgather(int(np.count_nonzero(E))),
            "excess_vs_dense": comm.allgather(allclose_excess(a.params, dense, 1e-5)),
            "resume_params_diff": comm.allgather(float(np.max(np.abs(c.params - a.params)))),
            "resume_residual_diff": comm.allgather(float(np.max(np.abs(c.sparse.residual() - E)))),
            "h": comm.allgather([np.asarray(a.sparse.h).tolist(), np.asarray(c.sparse.h).tolist()])}


SPARSE_RUNS = ["1-bruck", "2-bruck", "2-recursive", "4-bruck"]


def observe_algorithm(tmp):
    """Scenario on 4 ranks: sgd against spardl at density 1, then spardl at
    density 0.05 for each team layout."""
    comm = MPI.COMM_WORLD
    dense = train(build(comm, "sgd", 4), 4).params.copy()
    full = train(build(comm, "spardl", 4, "algo.density=1.0"), 4)
    seen = {"density_one": {
        "excess_vs_sgd": comm.allgather(allclose_excess(full.params, dense, 1e-12)),
        "residual_nonzeros": comm.allgather(int(np.count_nonzero(full.sparse.residual())))}}
    for name in SPARSE_RUNS:
        teams, sag = name.split("-")
        seen[name] = observe_sparse_run(comm, dense, int(teams), sag)
    return seen


@pytest.fixture(scope="module")
def algo_obs(tmp_path_factory):
    return run_scenario(__file__, "observe_algorithm", 4, tmp_path_factory)


def test_algorithm_density_one_is_sgd(algo_obs):
    o = algo_obs["density_one"]
    assert max(o["excess_vs_sgd"]) <= 1e-13
    assert o["residual_nonzeros"] == [0] * 4


@pytest.mark.parametrize("run", SPARSE_RUNS)
def test_algorithm_params_identical_residuals_rank_local(algo_obs, run):
    o = algo_obs[run]
    assert len(set(o["params"])) == 1
    assert len(set(o["residual"])) > 1


@pytest.mark.parametrize("run", SPARSE_RUNS)
def test_algorithm_sparse_run_differs_from_sgd_and_keeps_a_residual(algo_obs, run):
    o = algo_obs[run]
    # not np.allclose(params, sgd's) on any rank (default rtol 1e-5, atol 1e-8)
    assert min(o["excess_vs_dense"]) > 1e-8
    assert min(o["residual_nonzeros"]) > 0


@pytest.mark.parametrize("run", SPARSE_RUNS)
def test_algorithm_resume_from_state_dict_is_bitwise(algo_obs, run):
    o = algo_obs[run]
    assert o["resume_params_diff"] == [0.0] * 4
    assert o["resume_residual_diff"] == [0.0] * 4
    assert all(h_run == h_resumed for h_run, h_resumed in o["h"])
