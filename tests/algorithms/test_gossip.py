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


def test_defaults_and_resolved_config_round_trip():
    cfg = cfg_with()
    o = cfg.algo.options
    assert (o.p, o.max_outstanding, o.deterministic, o.budget) == (0.25, 2, False, "rank")
    again = config_from_dict(C.to_dict(cfg))
    assert again.algo.options == o


@pytest.mark.parametrize("P", [2, 3, 8])
def test_schedule_is_shared_never_self_and_uniform(P):
    p, T = 0.3, 4000
    pushes = np.zeros(P)
    hits = np.zeros((P, P))
    for t in range(T):
        push, dest = push_schedule(1, t, P, p)
        again = push_schedule(1, t, P, p)
        assert np.array_equal(push, again[0]) and np.array_equal(dest, again[1])
        assert np.all(dest != np.arange(P))
        pushes += push
        hits[np.arange(P), dest] += 1
    assert np.allclose(pushes / T, p, atol=0.03)
    # each other rank equally likely: (P-1) targets, T draws per source
    off = hits[~np.eye(P, dtype=bool)]
    assert np.allclose(off / T, 1 / (P - 1), atol=0.04)
    assert local_draw(1, 0, 5, P, 1.0)[0] and local_draw(1, 0, 5, P, 1.0)[1] != 0


def test_header_fits_alpha_and_step_in_the_payload_dtype():
    assert header_words(np.float32) == 4 and header_words(np.float64) == 2
    assert HEADER.itemsize == 16


@pytest.mark.parametrize("det", [False, True])
def test_single_rank_trains_locally_and_consensus_is_its_params(det):
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
    assert algo.step_count == 7 and algo.box is None and algo.synchronous
    assert not np.array_equal(algo.params, x0)          # it trained
    assert np.array_equal(algo.consensus_params(), algo.params)
    s = algo.summary()
    assert s["gossip_weight_sum"] == 1.0 and s["gossip_pushes_per_rank"] == 0
    st = algo.state_dict()
    assert set(st["shared"]) == {"consensus", "step"} and st["local"]["alpha"] == 1.0
