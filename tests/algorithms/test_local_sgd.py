"""localsgd / diloco / palsgd without mpiexec: registry and config keys,
validation errors naming the key, the mixing draws, and the one-rank run
against the serial simulation of docs/algorithms/local-sgd.md (the MPI file
covers P = 1..5)."""

import copy

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import config as C

from mpidsgd.catalog import load_config
from mpidsgd.algorithms import REGISTRY
from mpidsgd.algorithms.mixing import BLOCK, MixingDraws, mixing_draw
from refs.local_sgd_ref import build, close, make_cfg, problem, run_steps, shards, simulate

FAMILY = ("localsgd", "diloco", "palsgd")


def load(*sets, name="palsgd"):
    return load_config(None, [f'algo.name="{name}"', *sets], base={"run": {"steps": 10}})


PRESET_KEYS = {"localsgd": {"H", "warmup_steps", "overlap"},
               "diloco": {"H", "warmup_steps", "overlap", "outer_lr", "outer_momentum",
                          "outer_schedule"},
               "palsgd": {"H", "warmup_steps", "overlap", "outer_lr", "outer_momentum",
                          "outer_schedule", "p", "mix_rate", "same_draws"}}


@pytest.mark.parametrize("name", FAMILY)
def test_preset_is_registered_as_synchronous(name):
    assert REGISTRY[name].synchronous


@pytest.mark.parametrize("name", FAMILY)
def test_preset_has_exactly_its_option_keys(name):
    assert set(REGISTRY[name].Options.__dataclass_fields__) == PRESET_KEYS[name]


@pytest.mark.parametrize("name", FAMILY)
def test_preset_documents_every_option(name):
    fields = REGISTRY[name].Options.__dataclass_fields__
    assert all(f.metadata.get("doc") for f in fields.values())


def test_palsgd_default_options_by_hand():
    opts = load().algo.options
    assert (opts.H, opts.outer_lr, opts.outer_momentum, opts.p) == (32, 0.7, 0.9, 0.1)


@pytest.mark.parametrize("name,setting,key", [
    ("localsgd", "algo.H=0", "algo.H"),
    ("diloco", "algo.warmup_steps=-1", "algo.warmup_steps"),
    ("diloco", "algo.outer_lr=0", "algo.outer_lr"),
    ("diloco", "algo.outer_momentum=1.0", "algo.outer_momentum"),
    ("diloco", "algo.outer_schedule='step'", "algo.outer_schedule"),
    ("palsgd", "algo.p=1.0", "algo.p"),
    ("palsgd", "algo.p=-0.1", "algo.p"),
    ("palsgd", "algo.mix_rate=-1", "algo.mix_rate"),
    ("palsgd", "algo.H=2.5", "algo.H"),
    ("palsgd", "algo.overlap=1", "algo.overlap"),
    ("localsgd", "algo.p=0.1", "algo.p"),            # not a local SGD key
    ("localsgd", "algo.outer_lr=0.5", "algo.outer_lr"),
])
def test_bad_config_names_the_key(name, setting, key):
    with pytest.raises(C.ConfigError, match=key.replace(".", r"\.")):
        load(setting, name=name)


def test_mixing_step_may_not_overshoot_at_the_peak_lr():
    # α·η/p = 0.1·1/0.1 = 1 is allowed; above 1 is not, at the peak of the schedule
    load("algo.lr=0.1", "algo.p=0.1", "algo.mix_rate=1.0")
    with pytest.raises(C.ConfigError, match=r"algo\.mix_rate.*peak lr"):
        load("algo.lr=0.1", "algo.p=0.05", "algo.mix_rate=1.0")
    with pytest.raises(C.ConfigError, match=r"algo\.mix_rate"):
        load("algo.lr=0.01", "algo.p=0.1", "algo.mix_rate=1.0", 'algo.schedule="cosine"',
             "algo.schedule_min_lr=0.2")
    load("algo.lr=10.0", "algo.p=0.0", "algo.mix_rate=1.0")   # no mixing, no bound


P_MIX, N_MIX = 0.3, 3 * BLOCK + 5          # across block boundaries


@pytest.fixture(scope="module")
def own_draws():
    """Per-rank mixing draws (same_draws off) of ranks 0..2, seed 7, N_MIX steps."""
    return np.array([[draws(t) for t in range(N_MIX)] for draws in
                     (MixingDraws(7, r, False) for r in range(3))])


def test_mixing_draws_hit_at_rate_p(own_draws):
    p, n = P_MIX, N_MIX
    for r in range(3):
        hits = np.sum(own_draws[r] < p)
        assert abs(hits - p * n) < 5 * np.sqrt(n * p * (1 - p))


def test_per_rank_mixing_draws_are_independent(own_draws):
    assert abs(np.corrcoef(own_draws[0], own_draws[1])[0, 1]) < 0.05


def test_same_draws_are_one_stream_on_every_rank(own_draws):
    same = [[mixing_draw(7, t, r, True) for t in range(50)] for r in range(3)]
    assert same[0] == same[1] == same[2]
    assert same[0] != list(own_draws[0][:50])


def test_a_mixing_draw_is_a_pure_function_of_seed_step_and_rank(own_draws):
    # a resume redraws the same values
    for t in (123, BLOCK - 1, BLOCK, 2 * BLOCK + 7):
        assert mixing_draw(7, t, 2, False) == own_draws[2][t]
        assert mixing_draw(8, t, 2, False) != own_draws[2][t]


def test_no_block_of_mixing_draws_repeats_another(own_draws):
    assert len(set(own_draws[0])) == N_MIX


@pytest.mark.parametrize("name,kw", [
    ("localsgd", dict(H=3, warmup_steps=2, momentum=0.5)),
    ("diloco", dict(H=2, overlap=True, momentum=0.5)),
    ("palsgd", dict(H=3, p=0.3, mix_rate=0.5, warmup_steps=1, overlap=True,
                    outer_schedule="cosine")),
])
def test_one_rank_matches_simulation(name, kw):
    X, y, model, x0 = problem()
    m = kw.pop("momentum", 0.0)
    cfg = make_cfg(name, 13, momentum=m, **kw)
    algo, ch = build(cfg, MPI.COMM_SELF, model, x0, shards(X, y, 1)[0])
    xs, _, mix = run_steps(algo, shards(X, y, 1)[0], 13)
    sim_x, _, _ = simulate(cfg, 1, x0, model, shards(X, y, 1), [mix])
    assert all(close(xs[t], sim_x[t][0]) for t in range(13))
    assert (sum(mix) > 0) == (name == "palsgd")
    algo.finish()
    assert ch.counters.bytes.get("train", 0.0) == 0.0      # one rank sends nothing


def test_reshard_restarts_every_rank_from_the_global_model():
    X, y, model, x0 = problem()
    cfg = make_cfg("palsgd", 20, H=4, p=0.3, mix_rate=0.5, overlap=True, momentum=0.9)
    algo, _ = build(cfg, MPI.COMM_SELF, model, x0, shards(X, y, 1)[0])
    run_steps(algo, shards(X, y, 1)[0], 4)        # the sync of step 3 is in flight
    state = {"shared": copy.deepcopy(algo.state_dict()["shared"])}
    algo2, _ = build(cfg, MPI.COMM_SELF, model, x0, shards(X, y, 1)[0])
    algo2.load_state_dict(state, reshard=True)
    assert np.array_equal(algo2.params, state["shared"]["params"])
    assert algo2.step_count == 4 and algo2.pending
    run_steps(algo2, shards(X, y, 1)[0], 3)
    algo2.finish()
    assert np.all(np.isfinite(algo2.params))
