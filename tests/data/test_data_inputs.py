"""Input classes of file data (issue: bad input is one line, nothing silently
wrong): the label task decided from the model, IDX headers checked against
the file, CSV with a header and data.label_column, .npy and non-zip .npz
refused by name, quotes from a file cut to 80 characters.

Serial: load_data on a COMM_SELF channel with the task the entry point
decides (startup.resolve_task), as tests/data/test_data.py does.
"""
import gzip

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm.channel import Channel
from mpidsgd.config import Config, ConfigError
from mpidsgd.data import load_data
from mpidsgd.startup import resolve_task


def file_cfg(path, model="mlp", task="auto", **data):
    cfg = Config()
    cfg.data.name, cfg.data.path, cfg.data.task = "file", str(path), task
    cfg.data.batch_size, cfg.data.normalize = 4, False
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.model.name = model
    return cfg


def load(cfg):
    return load_data(cfg, Channel(MPI.COMM_SELF), Backend("cpu"), resolve_task(cfg)[0])


def refused(cfg, *words):
    with pytest.raises(ConfigError) as e:
        load(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def diabetes(path, n=120, seed=0):
    """Regression targets that happen to be whole numbers (as in sklearn's diabetes)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = np.round(150 + 40 * X @ rng.standard_normal(5)).astype(np.float64)
    np.savez(path, X=X, y=y)
    return X, y


# -- the label task -------------------------------------------------------------
@pytest.mark.parametrize("task", ["auto", "regression"])
def test_integer_valued_targets_of_a_regression_model_stay_targets(tmp_path, task):
    _, y = diabetes(tmp_path / "d.npz")
    assert len(np.unique(y)) > 50                   # today: that many "classes"
    cfg = file_cfg(tmp_path / "d.npz", model="ridge", task=task)
    cfg.run.dtype = "float64"
    ds = load(cfg)
    assert ds.task == "regression" and ds.n_outputs == 1 and ds.classes is None
    # the targets are the file's numbers, not class ids 0..C-1
    seen = np.concatenate([np.asarray(ds.train.y), np.asarray(ds.test_y)])
    assert np.array_equal(np.sort(seen), np.sort(y))


def test_the_task_must_fit_the_model(tmp_path):
    diabetes(tmp_path / "d.npz")
    with pytest.raises(ConfigError, match="data.task = regression needs a regression model"):
        resolve_task(file_cfg(tmp_path / "d.npz", model="mlp", task="regression"))
    with pytest.raises(ConfigError, match="model.name = ridge is a regression model"):
        resolve_task(file_cfg(tmp_path / "d.npz", model="ridge", task="classification"))
    assert resolve_task(file_cfg(tmp_path / "d.npz", model="logreg"))[0] == "binary"
    cfg = file_cfg(tmp_path / "d.npz", model="mlp")
    cfg.model.loss = "mse"                          # an mlp that declares regression
    assert resolve_task(cfg)[0] == "regression"
    ds = load(cfg)
    assert ds.task == "regression" and ds.n_outputs == 1 and ds.classes is None
    assert resolve_task(file_cfg(tmp_path / "d.npz", model="softmax"))[0] == "classification"


def three_class_file(tmp_path):
    X = np.random.default_rng(1).standard_normal((40, 3))
    np.savez(tmp_path / "three.npz", X=X, y=np.arange(40) % 3)
    return tmp_path / "three.npz"


def test_a_classifier_refuses_labels_that_are_not_integers(tmp_path):
    X = np.random.default_rng(1).standard_normal((40, 3))
    np.savez(tmp_path / "real.npz", X=X, y=np.linspace(0, 1, 40))
    refused(file_cfg(tmp_path / "real.npz"), "data.path", "not all integers", "ridge")


def test_logreg_refuses_three_classes(tmp_path):
    refused(file_cfg(three_class_file(tmp_path), model="logreg"), "3 classes", "binary")


def test_softmax_takes_three_classes(tmp_path):
    ds = load(file_cfg(three_class_file(tmp_path), model="softmax"))
    assert ds.task == "classification" and ds.n_outputs == 3


# -- IDX headers ----------------------------------------------------------------
def idx_bytes(arr, code=0x08):
    return bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()


def write_mnist(folder, n=12, compress=False):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    gz = ".gz" if compress else ""
    op = gzip.open if compress else open
    op(folder / f"a-images-idx3-ubyte{gz}", "wb").write(idx_bytes(imgs))
    op(folder / f"a-labels-idx1-ubyte{gz}", "wb").write(idx_bytes(labels))
    return folder / f"a-images-idx3-ubyte{gz}", folder / f"a-labels-idx1-ubyte{gz}"


@pytest.mark.parametrize("compress", [False, True])
def test_idx_dimension_count_is_checked_against_the_file(tmp_path, compress):
    imgs, labels = write_mnist(tmp_path, compress=compress)
    op = gzip.open if compress else open
    raw = bytearray(op(imgs, "rb").read())
    assert load(file_cfg(imgs)).input_shape == (1, 4, 4)
    raw[3] = 1                                      # dims byte: 3 -> 1
    op(imgs, "wb").write(bytes(raw))
    refused(file_cfg(imgs), "data.path", "1 dimension(s); expected 3")
    # 2 dims under a name without idxN: a valid rank, caught by the file size
    raw[3] = 2
    plain = tmp_path / "pictures.bin"
    plain.write_bytes(bytes(raw) if not compress else gzip.compress(bytes(raw)))
    refused(file_cfg(plain, labels_path=str(labels)), "longer than its header says")
    raw[3] = 3
    op(imgs, "wb").write(bytes(raw) + b"\0")        # one byte too many
    refused(file_cfg(imgs), "longer than its header says")


def test_idx_wrong_magic_is_refused(tmp_path):
    imgs, labels = write_mnist(tmp_path)
    raw = bytearray(imgs.read_bytes())
    raw[2] = 0x42                                   # unknown type code
    imgs.write_bytes(bytes(raw))
    refused(file_cfg(imgs), "data.path", "bad magic number 0x00004203")


def test_idx_labels_of_rank_2_are_refused(tmp_path):
    imgs, labels = write_mnist(tmp_path)
    labels.write_bytes(idx_bytes(np.zeros((12, 2), np.uint8)))
    refused(file_cfg(imgs), "data.labels_path", "2 dimension(s); expected 1")


# -- CSV, .npy, non-zip .npz, long lines ---------------------------------------
def write_csv(tmp_path):
    """t.csv: a header a,b,kind,target and 12 rows, target = 2a + 1."""
    rows = [[0.5, 1.0, 7, 2.0], [1.5, -1.0, 3, 4.0], [2.5, 0.0, 7, 6.0], [3.5, 2.0, 3, 8.0]] * 3
    text = "a,b,kind,target\n" + "\n".join(",".join(f"{v:g}" for v in r) for r in rows) + "\n"
    (tmp_path / "t.csv").write_text(text)


def test_csv_label_is_the_last_column_by_default(tmp_path):
    write_csv(tmp_path)
    cfg = file_cfg(tmp_path / "t.csv", model="ridge", test_fraction=0.25, batch_size=1)
    cfg.run.dtype = "float64"
    ds = load(cfg)                                  # default: the last column is the label
    assert ds.input_shape == (3,) and ds.task == "regression"
    X = np.concatenate([ds.train.X, ds.test_X])
    y = np.concatenate([ds.train.y, ds.test_y])
    assert np.array_equal(y, X[:, 0] * 2 + 1)      # target = 2a + 1 row by row


def test_csv_label_column_by_header_name_or_index(tmp_path):
    write_csv(tmp_path)
    for col in ("kind", 2, -2):
        cfg = file_cfg(tmp_path / "t.csv", model="softmax", label_column=col, test_fraction=0.25)
        ds = load(cfg)
        assert ds.n_outputs == 2 and list(ds.classes) == [3, 7] and ds.input_shape == (3,)


def test_csv_unknown_label_column_is_refused_naming_the_columns(tmp_path):
    write_csv(tmp_path)
    refused(file_cfg(tmp_path / "t.csv", label_column="nope"), "data.label_column 'nope'", "target")
    refused(file_cfg(tmp_path / "t.csv", label_column=9), "data.label_column 9", "4 columns")


def test_csv_short_line_is_refused_naming_the_line(tmp_path):
    (tmp_path / "short.csv").write_text("1,2,3\n4,5\n")
    refused(file_cfg(tmp_path / "short.csv"), "line 2 has 2 fields, expected 3")


def test_npy_and_random_npz_are_refused_by_name(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 3)))
    refused(file_cfg(tmp_path / "x.npy"), "data.path", "unsupported extension .npy", ".npz")
    (tmp_path / "r.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    msg = refused(file_cfg(tmp_path / "r.npz"), "r.npz", "cannot read as .npz", "no zip header")
    assert "pickle" not in msg


@pytest.mark.parametrize("name", ["wide.csv", "wide.txt"])
def test_a_long_bad_line_is_quoted_at_most_80_characters(tmp_path, name):
    row = ",".join(f"{v:.6f}" for v in np.linspace(0, 1, 70))      # about 700 characters
    fields = row.split(",")
    bad = ",".join(fields[:9] + ["x" * 120] + fields[10:]) if name.endswith(".csv") else row
    (tmp_path / name).write_text(f"{row}\n{bad}\n{row}\n")
    msg = refused(file_cfg(tmp_path / name), name, "line")
    quoted = msg.split("'")[1] if "'" in msg else ""
    assert len(quoted) <= 80 and len(msg) < 300, msg
    if name.endswith(".txt"):
        assert "must be named .csv" in msg          # the hint for comma-separated text
