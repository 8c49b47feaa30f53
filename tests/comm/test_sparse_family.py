"""The sparse family on one engine: one rounding rule for every collective,
the name registry, and each collective's own state (checkpoint names,
round trip, reset). Serial (one rank, MPI.COMM_SELF)."""
import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.algorithms.base import REGISTRY
from mpidsgd.algorithms.sparse import (ErrorFeedbackSGD, GTopkOptions, OkTopkOptions, SparDLOptions,
                                      SparseOptions)
from mpidsgd.comm.channel import Channel
from mpidsgd.comm.costmodel import select_count
from mpidsgd.comm.sparse_allreduce import COLLECTIVES, build_collective

OPTIONS = {"topka": SparseOptions, "gtopk": GTopkOptions, "spardl": SparDLOptions,
           "oktopk": OkTopkOptions}
# what each collective checkpoints, under the names earlier checkpoints hold
STATE_NAMES = {"topka": {"residual"}, "gtopk": {"residual"}, "spardl": {"residual", "sag_h"},
               "oktopk": {"residual", "oktopk_t", "oktopk_thresholds", "oktopk_bounds"}}


def make(name, n=100, density=0.29, **kw):
    opts = OPTIONS[name](density=density, **kw)
    return build_collective(name, n, np.float64, opts, channel=Channel(MPI.COMM_SELF))


def test_select_count_is_the_floor_of_n_times_density_without_float_error():
    assert 100 * 0.29 < 29                          # the float product is 28.999...
    assert select_count(100, 0.29) == 29
    assert select_count(1000, 0.0125) == 12


def test_select_count_selects_at_least_one_entry():
    assert select_count(100, 0.001) == 1


def test_select_count_selects_at_most_all_entries():
    assert select_count(7, 1.0) == 7


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
def test_every_collective_counts_with_the_one_rule(name):
    c = make(name)
    k = c.k_b if name == "spardl" else c.k        # spardl at P = 1: one block of n
    assert k == 29


def test_every_sparse_algorithm_runs_its_namesake_collective():
    family = {n: cls for n, cls in REGISTRY.items() if issubclass(cls, ErrorFeedbackSGD)}
    assert sorted(family) == sorted(COLLECTIVES) == sorted(STATE_NAMES)
    for name, cls in family.items():
        assert cls.collective == name and cls.Options is OPTIONS[name]
    with pytest.raises(ValueError, match="no sparse collective 'dense'"):
        build_collective("dense", 10, np.float64, SparseOptions(), channel=Channel(MPI.COMM_SELF))


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
def test_state_round_trip_continues_bit_for_bit(name):
    rng = np.random.default_rng(5)
    a = make(name)
    for _ in range(3):
        a.allreduce(rng.standard_normal(100))
    st = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in a.state_dict().items()}
    assert set(st) == STATE_NAMES[name]
    assert a.residual().any()
    b = make(name)
    b.load_state_dict(st)
    for _ in range(3):
        g = rng.standard_normal(100)
        assert np.array_equal(a.allreduce(g.copy()), b.allreduce(g.copy()))
        assert np.array_equal(a.residual(), b.residual())


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
def test_reset_is_a_fresh_collective(name):
    rng = np.random.default_rng(6)
    a, fresh = make(name), make(name)
    a.allreduce(rng.standard_normal(100))
    a.reset()
    assert not a.residual().any()
    g = rng.standard_normal(100)
    assert np.array_equal(a.allreduce(g.copy()), fresh.allreduce(g.copy()))
    assert np.array_equal(a.residual(), fresh.residual())
