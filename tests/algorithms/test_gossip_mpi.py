"""gosgd under MPI: push-sum conservation, no lost or duplicated message,
clean drain at any step counts, quiescing mid-run, convergence of pure
mixing; the merge kernel compiled before the first step.

One 8-rank launch (a scenario, see tests/helpers/mpi_scenario.py) tests every
world size on sub-communicators and records raw figures; each claim is a
serial test on them. Every rank starts from a DIFFERENT x_i (with equal
starts any merge weight would pass) and the mixing runs use lr = 0, so only
gossip moves the models. The deterministic mode against a serial
simulation, the checkpoint round trip and the mailbox are in
test_gossip_sim_mpi.py.
"""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.algorithms import gosgd
from mpidsgd.kernels.cpu.mixing import _mix_par
from gossip_runs import WORLD, conservation, conserved, make, run_to_end
from mpi_scenario import run_scenario
from mpiutil import assert_all, sub_comms


def observe_random_runs():
    """100 runs, P = 1..8, random p, max_outstanding and VERY different step
    counts per rank (1..40), free-running; every fourth run shares one step
    budget with one slow rank (the others take over its share)."""
    rng = np.random.default_rng(2024)
    runs = []
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
            else:
                algo.compute_emu.factor = 1.0 + 30.0 * (sub.rank == P - 1)
                algo.compute_emu.active = True
            x0 = algo.params.copy()
            run_to_end(algo, shard)
            runs.append({"tag": f"run {run} P={P} p={p:.2f} mo={mo}", "P": P, "budget": budget,
                         "budgets": steps[:P].tolist(),
                         "steps": sub.allgather(int(algo.step_count)),
                         "conservation": conservation(algo, x0, sub)})
            sub.Free()
        WORLD.Barrier()
    return runs


def observe_quiesce(sub):
    """Ranks at different steps quiesce mid-run, then train to the end."""
    algo, shard, _ = make(sub, steps=40, p=0.7, max_outstanding=2)
    x0 = algo.params.copy()
    for _ in range(15 + 3 * sub.rank):
        algo.step(shard)
    algo.quiesce()
    state = algo.state_dict()
    o = {"S": np.array(sub.allgather(state["local"]["sent_to"])).tolist(),
         "R": np.array(sub.allgather(state["local"]["recv_from"])).tolist(),
         "sum_alpha": float(sub.allreduce(float(state["local"]["alpha"])))}
    run_to_end(algo, shard)
    o["after"] = conservation(algo, x0, sub)
    return o


def observe_mixing(sub, det):
    """lr = 0: the spread max_i |x_i - x̄| at the start, after 5 steps and
    at step 400, and every rank's distance of its consensus to x̄."""
    algo, shard, _ = make(sub, steps=400, p=1.0, deterministic=det, seed=3)
    mean0 = np.zeros_like(algo.params)
    sub.Allreduce(algo.params / sub.size, mean0)
    spread = [sub.allreduce(np.max(np.abs(algo.params - mean0)), op=MPI.MAX)]
    while not algo.done():
        algo.step(shard)
        if algo.step_count in (5, 400):
            spread.append(sub.allreduce(np.max(np.abs(algo.params - mean0)), op=MPI.MAX))
    algo.finish()
    return {"spread": [float(x) for x in spread],
            "cons_dev": sub.allgather(float(np.max(np.abs(algo.consensus_params() - mean0))))}


def observe_gossip(tmp):
    """Scenario on 8 ranks: the random runs, quiesce for P = 2, 5, 8, pure
    mixing for P = 2, 3, 8 (lock step and free-running)."""
    seen = {"runs": observe_random_runs(), "quiesce": {}, "mixing": {}}
    for P, sub in sub_comms([2, 5, 8]):
        if sub != MPI.COMM_NULL:
            seen["quiesce"][str(P)] = observe_quiesce(sub)
    for P, sub in sub_comms([2, 3, 8]):
        if sub != MPI.COMM_NULL:
            for det in (True, False):
                seen["mixing"][f"P{P}-det={det}"] = observe_mixing(sub, det)
    return seen


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    return run_scenario(__file__, "observe_gossip", 8, tmp_path_factory)


def test_random_runs_cover_every_world_size_and_both_budgets(obs):
    runs = obs["runs"]
    assert len(runs) == 100 and {r["P"] for r in runs} == set(range(1, 9))
    assert {r["budget"] for r in runs} == {"rank", "shared"}


def test_random_runs_drain_after_each_ranks_own_step_budget(obs):
    for r in obs["runs"]:
        if r["budget"] == "rank":
            assert r["steps"] == r["budgets"], r["tag"]


def test_random_runs_with_a_shared_budget_take_it_over_together(obs):
    for r in obs["runs"]:
        if r["budget"] == "shared":
            P, total = r["P"], sum(r["steps"])
            assert P * 40 <= total <= P * 40 + 40 * P * P, f"{r['tag']}: shared budget {total}"


def test_random_runs_keep_the_weights_summing_to_one(obs):
    for r in obs["runs"]:
        assert abs(r["conservation"]["sum_alpha"] - 1.0) <= 1e-12, r["tag"]


def test_random_runs_keep_the_weighted_average_at_the_initial_average(obs):
    for r in obs["runs"]:
        c = r["conservation"]
        assert c["dev"] <= 1e-10 * max(1.0, c["scale"]), r["tag"]
        assert max(c["cons_dev"]) <= 1e-10, r["tag"]


def test_random_runs_receive_every_push_exactly_once(obs):
    for r in obs["runs"]:
        c = r["conservation"]
        if c["boxed"]:
            S, R = np.array(c["S"]), np.array(c["R"])
            assert np.array_equal(S, R.T) and np.all(np.diag(S) == 0), r["tag"]
            assert S.sum() == c["pushes"] == c["merged"], r["tag"]


def test_random_runs_exercised_gossip(obs):
    assert sum(r["conservation"].get("pushes", 0) for r in obs["runs"]) > 500


@pytest.mark.parametrize("P", ["2", "5", "8"])
def test_quiesce_leaves_nothing_in_flight(obs, P):
    # every push so far was merged, Σα = 1 exactly as stored
    o = obs["quiesce"][P]
    assert np.array_equal(np.array(o["S"]), np.array(o["R"]).T)
    assert abs(o["sum_alpha"] - 1) <= 1e-12


@pytest.mark.parametrize("P", ["2", "5", "8"])
def test_training_after_quiesce_conserves_and_loses_nothing(obs, P):
    assert conserved(obs["quiesce"][P]["after"]) == ""


MIXING = [f"P{P}-det={det}" for P in (2, 3, 8) for det in (True, False)]


@pytest.mark.parametrize("key", MIXING)
def test_pure_mixing_shrinks_the_spread(obs, key):
    # lock step: mixing has begun after 5 steps and goes on to the end;
    # free-running ranks mix as messages arrive, the drain merges the last ones
    s, det = obs["mixing"][key]["spread"], key.endswith("True")
    assert s[0] > 0.5 and (s[1] < s[0] or not det)
    assert s[2] < 1e-9 if det else s[2] < 0.5 * s[0]


@pytest.mark.parametrize("key", MIXING)
def test_pure_mixing_ends_at_the_initial_average(obs, key):
    # push-sum is unbiased
    assert max(obs["mixing"][key]["cons_dev"]) < 1e-12


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
