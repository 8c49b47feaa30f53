"""Data files: npz, HDF5, LIBSVM and IDX formats round trip, test files and
seeded splits, label rules, and the one-line errors naming key and file.

Serial tests: load_data on a COMM_SELF channel (tests/helpers/data_cfg.py).
"""
import gzip

import h5py
import numpy as np
import pytest

from mpidsgd.config import ConfigError
from mpidsgd.data.files import split_rows
from mpidsgd.data.formats import sibling_labels
from data_cfg import load, make_cfg


# -- files ----------------------------------------------------------------------
def data(n=40, d=3, labels=(2, 5, 9), seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.asarray(labels)[rng.integers(0, len(labels), n)]


def write_libsvm(path, X, y, compress=False):
    lines = [f"{y[i]:g} " + " ".join(f"{j + 1}:{float(X[i, j])!r}" for j in range(X.shape[1]) if X[i, j])
             for i in range(len(y))]
    text = ("# comment line\n" + "\n".join(lines) + "\n").encode()
    (gzip.open if compress else open)(path, "wb").write(text)


def write_idx(path, arr, compress=False):
    codes = {np.dtype("u1"): 0x08, np.dtype(">f4"): 0x0D}
    head = bytes([0, 0, codes[arr.dtype], arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    (gzip.open if compress else open)(path, "wb").write(head + arr.tobytes())


def file_cfg(path, test_path, **kw):
    return make_cfg(**{"name": "file", "path": str(path), "test_path": str(test_path),
                       "normalize": False, "batch_size": 4, **kw})


@pytest.mark.parametrize("fmt", ["npz", "h5", "libsvm", "libsvm.gz"])
def test_vector_formats_round_trip(tmp_path, fmt):
    (X, y), (tX, ty) = data(), data(n=11, seed=1)
    X[3, 1] = tX[2, 2] = 0.0                          # sparse entries in text formats
    for p, a, b in [("train", X, y), ("test", tX, ty)]:
        path = tmp_path / f"{p}.{fmt}"
        if fmt == "npz":
            np.savez(path, X=a, y=b)
        elif fmt == "h5":
            with h5py.File(path, "w") as f:
                f["X"], f["y"] = a, b
        else:
            write_libsvm(path, a, b, compress=fmt.endswith(".gz"))
    ds = load(file_cfg(tmp_path / f"train.{fmt}", tmp_path / f"test.{fmt}"))
    assert ds.input_shape == (3,) and ds.n_train == 40 and ds.n_test == 11
    assert np.allclose(ds.train.X, X.astype(np.float32))
    assert np.allclose(ds.test_X, tX.astype(np.float32))
    assert list(ds.classes) == [2, 5, 9] and ds.n_outputs == 3 and ds.task == "classification"
    assert np.array_equal(ds.train.y, np.searchsorted([2, 5, 9], y))
    assert np.array_equal(ds.test_y, np.searchsorted([2, 5, 9], ty))


def test_libsvm_test_file_with_more_features_widens_both(tmp_path):
    (tmp_path / "a.svm").write_text("1 1:1 2:2\n-1 2:3\n0 1:1\n1 2:1\n")
    (tmp_path / "b.svm").write_text("1 qid:3 4:5\n")
    ds = load(file_cfg(tmp_path / "a.svm", tmp_path / "b.svm", batch_size=1))
    assert ds.input_shape == (4,) and np.array_equal(ds.test_X, [[0, 0, 0, 5]])
    assert np.array_equal(ds.train.X[1], [0, 3, 0, 0])


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (30, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, 30).astype(np.uint8)
    gz = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", imgs, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", labels, compress)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{gz}", imgs[:7], compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{gz}", labels[:7], compress)
    cfg = file_cfg(tmp_path / f"train-images-idx3-ubyte{gz}", tmp_path / f"t10k-images-idx3-ubyte{gz}")
    ds = load(cfg)
    assert ds.input_shape == (1, 4, 5) and ds.train.X.shape == (30, 1, 4, 5)
    assert np.allclose(ds.train.X[:, 0], imgs / 255.0) and np.allclose(ds.test_X[:, 0], imgs[:7] / 255.0)
    classes = np.unique(labels)
    assert np.array_equal(ds.train.y, np.searchsorted(classes, labels))
    # normalised: one mean and std per channel, not per pixel
    cfg.data.normalize = True
    ds = load(cfg)
    assert ds.mean.shape == (1,) and np.isclose(ds.mean[0], (imgs / 255.0).mean())
    assert np.isclose(float(ds.train.X.std()), 1.0, atol=1e-5)


def test_sibling_labels_names():
    assert sibling_labels("/d/train-images-idx3-ubyte.gz") == "/d/train-labels-idx1-ubyte.gz"
    assert sibling_labels("/d/t10k-images.idx3-ubyte") == "/d/t10k-labels.idx1-ubyte"
    assert sibling_labels("/d/pictures.idx") is None


def test_seeded_split_is_fixed_and_complete(tmp_path):
    X, y = data(n=50)
    X[:, 0] = np.arange(50)                            # column 0 = the file row
    np.savez(tmp_path / "d.npz", X=X, y=y)
    cfg = make_cfg(name="file", path=str(tmp_path / "d.npz"), test_fraction=0.2,
                   normalize=False, batch_size=4)
    cfg.run.dtype = "float64"
    ds = load(cfg)
    train, test = split_rows(50, 0.2, 0, "d")
    assert ds.n_train == 40 and ds.n_test == 10
    assert np.array_equal(ds.train.X[:, 0], train) and np.array_equal(ds.test_X[:, 0], test)
    assert sorted(np.concatenate([train, test])) == list(range(50))
    cfg.run.seed = 1
    assert not np.array_equal(load(cfg).test_X[:, 0], test)


def test_label_rules(tmp_path):
    X, _ = data(n=20)
    ypm = np.where(np.arange(20) % 2, 1.0, -1.0)
    np.savez(tmp_path / "pm.npz", X=X, y=ypm)
    np.savez(tmp_path / "reg.npz", X=X, y=np.linspace(0, 1, 20))
    cfg = make_cfg(name="file", path=str(tmp_path / "pm.npz"), batch_size=2)
    ds = load(cfg)
    assert ds.task == "classification" and ds.n_outputs == 2 and set(np.unique(ds.train.y)) <= {0, 1}
    cfg.model.name = "logreg"
    ds = load(cfg)
    assert ds.task == "binary" and ds.n_outputs == 1 and list(ds.classes) == [-1, 1]
    cfg.data.path = str(tmp_path / "reg.npz")
    cfg.model.name = "ridge"
    ds = load(cfg)
    assert ds.task == "regression" and ds.n_outputs == 1 and ds.train.y.dtype == np.float32


# -- errors -----------------------------------------------------------------------
def bad(cfg, *words):
    with pytest.raises(ConfigError) as e:
        load(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_errors_name_the_key_and_file(tmp_path):
    X, y = data(n=20)
    bad(make_cfg(name="file", path=str(tmp_path / "none.npz")), "data.path", "none.npz", "does not exist")
    np.savez(tmp_path / "noy.npz", X=X)
    bad(make_cfg(name="file", path=str(tmp_path / "noy.npz")), "data.path", "'y'")
    np.savez(tmp_path / "len.npz", X=X, y=y[:-1])
    bad(make_cfg(name="file", path=str(tmp_path / "len.npz")), "data.path", "20", "19")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    bad(make_cfg(name="file", path=str(tmp_path / "junk.npz")), "junk.npz", "cannot read")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    bad(make_cfg(name="file", path=str(tmp_path / "junk.h5")), "junk.h5", "HDF5")
    (tmp_path / "bad.svm").write_text("1 1:2 3:4\n0 2:x\n")
    bad(make_cfg(name="file", path=str(tmp_path / "bad.svm")), "bad.svm", "line 2", "'x'")
    (tmp_path / "bad2.svm").write_text("1 1:2\n\n0 2-3\n")
    bad(make_cfg(name="file", path=str(tmp_path / "bad2.svm")), "line 3", "idx:value")
    (tmp_path / "bad3.svm").write_text("1 0:2\n")
    bad(make_cfg(name="file", path=str(tmp_path / "bad3.svm")), "line 1", "index")
    np.savez(tmp_path / "ok.npz", X=X, y=y)
    bad(make_cfg(name="file", path=str(tmp_path / "ok.npz"), test_path=str(tmp_path / "t.npz")),
        "data.test_path", "t.npz")
    np.savez(tmp_path / "wide.npz", X=np.zeros((5, 4)), y=np.zeros(5))
    bad(make_cfg(name="file", path=str(tmp_path / "ok.npz"), test_path=str(tmp_path / "wide.npz")),
        "data.test_path", "shape")
    Xn = X.copy()
    Xn[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", X=Xn, y=y)
    bad(make_cfg(name="file", path=str(tmp_path / "nan.npz")), "nan.npz", "NaN")
    np.savez(tmp_path / "one.npz", X=X, y=np.ones(20))
    bad(make_cfg(name="file", path=str(tmp_path / "one.npz")), "data.path", "two classes")
    bad(make_cfg(name="file", path=str(tmp_path / "ok.npz"), batch_size=17), "data.batch_size", "16")
    bad(make_cfg(n_samples=10, batch_size=32), "data.batch_size")


def test_idx_errors(tmp_path):
    imgs = np.zeros((6, 2, 2), np.uint8)
    write_idx(tmp_path / "x-images-idx3-ubyte", imgs)
    bad(make_cfg(name="file", path=str(tmp_path / "x-images-idx3-ubyte")),
        "x-labels-idx1-ubyte", "data.labels_path")
    write_idx(tmp_path / "x-labels-idx1-ubyte", np.zeros(5, np.uint8))
    bad(make_cfg(name="file", path=str(tmp_path / "x-images-idx3-ubyte")), "6", "5")
    raw = (tmp_path / "x-images-idx3-ubyte").read_bytes()
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(raw[:-3])
    bad(make_cfg(name="file", path=str(tmp_path / "cut-images-idx3-ubyte"),
                 labels_path=str(tmp_path / "x-labels-idx1-ubyte")), "truncated")
