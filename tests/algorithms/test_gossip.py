"""gosgd without MPI peers: configuration errors, the push schedule, the
payload layout and the single-rank algorithm (no gossip, exact consensus)."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C

from mpidsgd.catalog import config_from_dict
from mpidsgd.algorithms import REGISTRY
from mpidsgd.algorithms.gosgd import local_draw, push_schedule
from mpidsgd.backend import Backend
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.gossip import HEADER, header_words
from mpidsgd.models import build_model
from mpidsgd.topology import Topology


def cfg_with(**algo):
    return config_from_dict({"run": {"steps": 5}, "algo": {"name": "gosgd", **algo}})


@pytest.mark.parametrize("key,value,needle", [
    ("p", 1.5, "algo.p"), ("p", -0.1, "algo.p"),
    ("max_outstanding", 0, "algo.max_outstanding"),
    ("max_outstanding", 1000, "algo.max_outstanding"),
    ("max_outstanding", 1.5, "algo.max_outstanding"),
    ("deterministic", "yes", "algo.deterministic"),
    ("push_every", 3, "algo.push_every"),
    ("budget", "global", "algo.budget"),
])
def test_bad_config_names_the_key(key, value, needle):
    with pytest.raises(C.ConfigError, match=needle.replace(".", r"\.")):
        cfg_with(**{key: value})


def test_shared_budget_needs_free_running_ranks():
    with pytest.raises(C.ConfigError, match=r"algo\.budget"):
        cfg_with(budget="shared", deterministic=True)


def test_default_options_by_hand():
    o = cfg_with().algo.options
    assert (o.p, o.max_outstanding, o.deterministic, o.budget) == (0.25, 2, False, "rank")


def test_resolved_config_round_trips():
    cfg = cfg_with()
    o = cfg.algo.options
    again = config_from_dict(C.to_dict(cfg))
    assert again.algo.options == o


@pytest.fixture(scope="module", params=[2, 3, 8], ids=lambda P: f"P{P}")
def schedule(request):
    """T = 4000 draws of push_schedule at P ranks and p = 0.3, each drawn twice:
    (P, p, T, [(push, dest, push again, dest again)])."""
    P, p, T = request.param, 0.3, 4000
    draws = [(*push_schedule(1, t, P, p), *push_schedule(1, t, P, p)) for t in range(T)]
    return P, p, T, draws


def test_schedule_is_the_same_at_every_call(schedule):
    # every rank computes the same schedule from (seed, step): nothing to agree on
    for push, dest, push2, dest2 in schedule[3]:
        assert np.array_equal(push, push2) and np.array_equal(dest, dest2)


def test_schedule_never_sends_to_self(schedule):
    P = schedule[0]
    for _, dest, _, _ in schedule[3]:
        assert np.all(dest != np.arange(P))


def test_schedule_pushes_at_rate_p(schedule):
    P, p, T, draws = schedule
    pushes = sum(push.astype(float) for push, _, _, _ in draws)
    assert np.allclose(pushes / T, p, atol=0.03)


def test_schedule_targets_every_other_rank_equally_often(schedule):
    # each other rank equally likely: (P-1) targets, T draws per source
    P, _, T, draws = schedule
    hits = np.zeros((P, P))
    for _, dest, _, _ in draws:
        hits[np.arange(P), dest] += 1
    off = hits[~np.eye(P, dtype=bool)]
    assert np.allclose(off / T, 1 / (P - 1), atol=0.04)


@pytest.mark.parametrize("P", [2, 3, 8])
def test_local_draw_at_p_1_always_pushes_to_another_rank(P):
    assert local_draw(1, 0, 5, P, 1.0)[0] and local_draw(1, 0, 5, P, 1.0)[1] != 0


def test_header_fits_alpha_and_step_in_the_payload_dtype():
    assert header_words(np.float32) == 4 and header_words(np.float64) == 2
    assert HEADER.itemsize == 16


@pytest.fixture(scope="module", params=[False, True], ids=["free", "deterministic"])
def single_rank(request):
    """gosgd on one rank (MPI.COMM_SELF), 7 steps and finish(): (algo, x0)."""
    det = request.param
    cfg = config_from_dict({"run": {"steps": 7, "dtype": "float64"},
                       "algo": {"name": "gosgd", "lr": 0.1, "deterministic": det}})
    topo = Topology(MPI.COMM_SELF)
    backend = Backend("cpu")
    model = build_model("softmax", input_shape=(4,), n_outputs=3, dtype="float64")
    params = np.random.default_rng(0).normal(size=model.layout.size)
    algo = REGISTRY["gosgd"](cfg, topo, backend, model, params, Channel(topo.world))

    class Shard:
        steps_per_epoch = 10

        def next_batch(self):
            r = np.random.default_rng(1)
            return r.normal(size=(8, 4)), r.integers(0, 3, 8), np.arange(8)
    algo.plan(Shard())
    x0 = params.copy()
    while not algo.done():
        algo.step(Shard())
    algo.finish()
    return algo, x0


def test_single_rank_runs_its_steps_synchronously_without_a_mailbox(single_rank):
    algo, _ = single_rank
    assert algo.step_count == 7 and algo.box is None and algo.synchronous


def test_single_rank_trains(single_rank):
    algo, x0 = single_rank
    assert not np.array_equal(algo.params, x0)


def test_single_rank_consensus_is_its_params(single_rank):
    algo, _ = single_rank
    assert np.array_equal(algo.consensus_params(), algo.params)


def test_single_rank_keeps_weight_1_and_pushes_nothing(single_rank):
    s = single_rank[0].summary()
    assert s["gossip_weight_sum"] == 1.0 and s["gossip_pushes_per_rank"] == 0


def test_single_rank_state_is_consensus_step_and_alpha_1(single_rank):
    st = single_rank[0].state_dict()
    assert set(st["shared"]) == {"consensus", "step"} and st["local"]["alpha"] == 1.0
