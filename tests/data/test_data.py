"""Data: synthetic determinism and shard batching.

Serial tests; one rank calls the per-rank builders for every rank of a
pretend world, or load_data on a COMM_SELF channel. The MPI side (disjoint
shards, agreed steps, collective statistics) is in test_data_mpi.py, file
formats, labels and errors in test_data_files.py.
"""
import numpy as np
import pytest

from mpidsgd.config import ConfigError
from mpidsgd.data import Shard, shard_range, synthetic, synthetic_local
from data_cfg import load, make_cfg


# -- synthetic ----------------------------------------------------------------
@pytest.mark.parametrize("task", ["classification", "binary", "regression"])
def test_synthetic_sample_i_is_the_same_for_every_world_size(task):
    cfg = make_cfg(task=task, n_samples=5000, n_test=3000, n_features=7)
    full = synthetic_local(cfg, 0, 1)
    for P in (2, 3, 5):
        parts = [synthetic_local(cfg, r, P) for r in range(P)]
        assert np.array_equal(np.concatenate([p.X for p in parts]), full.X)
        assert np.array_equal(np.concatenate([p.y for p in parts]), full.y)
        assert np.array_equal(np.concatenate([p.ids for p in parts]), np.arange(5000))
        assert np.array_equal(np.concatenate([p.test_X for p in parts]), full.test_X)
    # any slice, across chunk boundaries, equals the same rows of the whole
    for a, b in [(0, 1), (1000, 1100), (1023, 1025), (2047, 4100)]:
        X, y = synthetic.generate(cfg.data, 0, a, b)
        assert np.array_equal(X, full.X[a:b]) and np.array_equal(y, full.y[a:b])


def seed_runs():
    """Train rows of seed 3 twice, of seed 4, and the test rows of seed 3."""
    cfg = make_cfg(n_samples=2000, n_test=500)
    a, b = synthetic.generate(cfg.data, 3, 0, 2000), synthetic.generate(cfg.data, 3, 0, 2000)
    c = synthetic.generate(cfg.data, 4, 0, 2000)
    t = synthetic.generate(cfg.data, 3, 0, 500, "test")
    return a, b, c, t


def test_synthetic_same_seed_gives_the_same_data():
    a, b, _, _ = seed_runs()
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_synthetic_another_seed_gives_other_data():
    a, _, c, _ = seed_runs()
    assert not np.allclose(a[0], c[0])


def test_synthetic_test_split_differs_from_the_train_split():
    a, _, _, t = seed_runs()
    assert not np.allclose(a[0][:500], t[0])


@pytest.fixture(scope="module")
def noisy_classes():
    """20000 classification rows with data.noise = 0.2, and the same rows without."""
    cfg = make_cfg(n_samples=20000, noise=0.2)
    teacher = synthetic.Teacher(0, "classification", 64, 10)
    X, y = synthetic.generate(cfg.data, 0, 0, 20000, teacher=teacher)
    Xc, yc = synthetic.generate(make_cfg(noise=0.0).data, 0, 0, 20000)
    return cfg, X, y, Xc, yc


def test_label_noise_never_moves_the_inputs(noisy_classes):
    _, X, _, Xc, _ = noisy_classes
    assert np.array_equal(X, Xc)


def test_label_noise_changes_noise_times_nine_tenths_of_the_labels(noisy_classes):
    _, _, y, _, yc = noisy_classes
    changed = np.mean(y != yc)
    assert 0.2 * 0.9 - 0.02 < changed < 0.2 * 0.9 + 0.02   # a uniform redraw keeps 1/C


def test_synthetic_classes_are_int64_and_balanced(noisy_classes):
    _, _, y, _, _ = noisy_classes
    freq = np.bincount(y, minlength=10) / len(y)
    assert y.dtype == np.int64 and freq.min() > 0.07 and freq.max() < 0.13


def test_synthetic_test_split_is_noise_free_whatever_data_noise_says(noisy_classes):
    cfg = noisy_classes[0]
    _, ty = synthetic.generate(cfg.data, 0, 0, 3000, "test")
    _, ty0 = synthetic.generate(make_cfg(noise=0.0).data, 0, 0, 3000, "test")
    assert np.array_equal(ty, ty0)


def test_synthetic_binary_labels_are_0_1_and_balanced():
    Xb, yb = synthetic.generate(make_cfg(task="binary", noise=0.0).data, 0, 0, 4000)
    assert set(np.unique(yb)) == {0, 1} and 0.4 < yb.mean() < 0.6


def regression(noise):
    return synthetic.generate(make_cfg(task="regression", noise=noise).data, 0, 0, 4000)


def test_synthetic_regression_noise_moves_float64_targets_not_inputs():
    (X, y), (X0, y0) = regression(0.5), regression(0.0)
    assert y.dtype == np.float64 and np.array_equal(X, X0)
    assert 0.4 < np.std(y - y0) < 0.6


def test_synthetic_regression_without_noise_is_exactly_linear():
    X0, y0 = regression(0.0)
    w = np.linalg.lstsq(X0, y0, rcond=None)[0]
    assert np.allclose(X0 @ w, y0)                     # y = X w* exactly without noise


def test_weak_scaling_gives_each_rank_its_own_range():
    cfg = make_cfg(samples_per_rank=700, n_test=100)
    parts = [synthetic_local(cfg, r, 3) for r in range(3)]
    assert all(p.n_train == 2100 for p in parts)
    assert np.array_equal(parts[2].ids, np.arange(1400, 2100))
    X, _ = synthetic.generate(cfg.data, 0, 1400, 2100)
    assert np.array_equal(parts[2].X, X)


def test_load_data_synthetic_defaults():
    cfg = make_cfg(n_samples=3000, n_test=1000, n_features=5)
    cfg.run.dtype = "float64"
    ds = load(cfg)
    assert ds.task == "classification" and ds.n_outputs == 10 and ds.input_shape == (5,)
    assert ds.n_train == 3000 and ds.n_test == 1000 and len(ds.test_y) == 1000
    assert ds.train.X.dtype == np.float64 and ds.train.y.dtype == np.int64
    assert np.allclose(ds.train.X.mean(0), 0, atol=1e-12) and np.allclose(ds.train.X.std(0), 1)
    assert ds.train.steps_per_epoch == 3000 // 32
    # binary data: two classes for a multi-class model, one logit for logreg
    assert load(make_cfg(task="binary", n_samples=200)).n_outputs == 2
    cfg = make_cfg(task="binary", n_samples=200)
    cfg.model.name = "logreg"
    assert (load(cfg).task, load(cfg).n_outputs) == ("binary", 1)
    cfg = make_cfg(n_classes=2, n_samples=200)
    cfg.model.name = "logreg"
    assert (load(cfg).task, load(cfg).n_outputs) == ("binary", 1)


# -- shard ------------------------------------------------------------------------
def make_shard(n=100, B=32, seed=0, rank=0):
    X = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 2))
    return Shard(X, np.arange(n), np.arange(n) + 1000, B, n // B, seed=seed, rank=rank)


def test_shard_ranges_are_disjoint_and_complete():
    for n in (0, 1, 7, 100):
        for P in range(1, 6):
            bounds = [shard_range(n, r, P) for r in range(P)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(P - 1))


def first_epoch(n=100, B=32):
    """A shard's batches of its first epoch: (shard, [(X, y, idx)])."""
    s = make_shard(n=n, B=B)
    return s, [s.next_batch() for _ in range(s.steps_per_epoch)]


def test_batches_are_full_rows_with_their_labels():
    _, batches = first_epoch()
    for X, y, idx in batches:
        assert X.shape == (32, 2) and np.array_equal(y, idx) and np.array_equal(X[:, 0], idx)


def test_an_epoch_drops_the_last_partial_batch():
    s, batches = first_epoch()
    assert s.steps_per_epoch == 3
    seen = np.concatenate([idx for _, _, idx in batches])
    assert len(np.unique(seen)) == 96 and (s.epoch, s.pos) == (1, 0) and s.epochs_done == 1.0


def test_the_next_epoch_draws_a_new_permutation():
    s, batches = first_epoch()
    nxt = s.next_batch()[2]
    assert not np.array_equal(nxt, batches[0][2])
    assert (s.epoch, s.pos) == (1, 1)


def test_shuffle_is_the_same_for_the_same_seed_and_rank():
    a, b = make_shard(), make_shard()
    assert all(np.array_equal(a.next_batch()[2], b.next_batch()[2]) for _ in range(7))


def test_shuffle_changes_with_the_seed():
    assert not np.array_equal(make_shard(seed=1).next_batch()[2], make_shard().next_batch()[2])


def test_shuffle_changes_with_the_rank():
    assert not np.array_equal(make_shard(rank=1).next_batch()[2], make_shard().next_batch()[2])


@pytest.mark.parametrize("k", [0, 2, 3, 5])
def test_resume_from_state_dict_reproduces_the_next_batches(k):
    s = make_shard()
    for _ in range(k):
        s.next_batch()
    state = s.state_dict()
    ref = [s.next_batch()[2] for _ in range(7)]
    t = make_shard()
    t.load_state_dict({key: np.asarray(v) for key, v in state.items()})
    assert (t.epoch, t.pos) == (k // 3, k % 3)
    assert all(np.array_equal(r, t.next_batch()[2]) for r in ref)
    with pytest.raises(ConfigError):
        make_shard(n=99).load_state_dict(state)


def test_iter_batches_covers_everything_once_in_order():
    s = make_shard(n=100, B=32)
    s.next_batch()
    parts = list(s.iter_batches(30))
    assert [len(p[2]) for p in parts] == [30, 30, 30, 10]
    assert np.array_equal(np.concatenate([p[2] for p in parts]), np.arange(100))
    assert np.array_equal(np.concatenate([p[1] for p in parts]), np.arange(100))
    assert (s.epoch, s.pos) == (0, 1)                  # a full pass leaves the order alone
    assert len(list(s.iter_batches())) == 4            # default: the shard's batch size


def test_shard_advance_moves_the_order_like_next_batch():
    X, y = np.arange(40.0).reshape(20, 2), np.arange(20.0)
    a, b = (Shard(X, y, np.arange(20), 4, 5, seed=3) for _ in range(2))
    for _ in range(7):
        a.next_batch()
        b.advance()
    assert (a.epoch, a.pos) == (b.epoch, b.pos) == (1, 2)
    np.testing.assert_array_equal(a.next_batch()[2], b.next_batch()[2])
