"""Property tests: mutated IDX headers and LIBSVM lines give a clean
ConfigError (one line: the CLI's exit 2) or a valid dataset, never another
exception. The loaders run in-process on a COMM_SELF channel.

Bounded for CI: a fixed number of examples per property, derandomised so
that a run is reproducible (hypothesis prints the failing example).
"""
import gzip
import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm.channel import Channel
from mpidsgd.config import Config, ConfigError
from mpidsgd.data import load_data
from mpidsgd.startup import resolve_task

BOUND = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
FOLDER = tempfile.mkdtemp(prefix="mpidsgd-fuzz-")


def cfg_for(path, **data):
    cfg = Config()
    cfg.data.name, cfg.data.path, cfg.data.batch_size = "file", path, 2
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.run.dtype = "float64"
    return cfg


def outcome(cfg):
    """'error' for a one-line ConfigError, else the dataset; anything else raises."""
    try:
        return load_data(cfg, Channel(MPI.COMM_SELF), Backend("cpu"), resolve_task(cfg)[0])
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 400, str(e)
        return "error"


def idx_file(arr):
    return bytearray(bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
                     + arr.tobytes())


IMAGES = idx_file(np.arange(10 * 3 * 2, dtype=np.uint8).reshape(10, 3, 2))
LABELS = idx_file((np.arange(10) % 3).astype(np.uint8))


@BOUND
@given(which=st.sampled_from(["images", "labels"]),
       edits=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.integers(-8, 8), compress=st.booleans())
def test_mutated_idx_header_is_an_error_or_a_valid_dataset(which, edits, cut, compress):
    raw = {"images": bytearray(IMAGES), "labels": bytearray(LABELS)}
    for pos, value in edits:                          # header bytes: magic, type, dims
        raw[which][pos] = value
    raw[which] = raw[which][:len(raw[which]) + cut] if cut < 0 else raw[which] + bytes(cut)
    gz = ".gz" if compress else ""
    paths = {k: os.path.join(FOLDER, f"m-{k}-idx{3 if k == 'images' else 1}-ubyte{gz}") for k in raw}
    for k, data in raw.items():
        with (gzip.open if compress else open)(paths[k], "wb") as fh:
            fh.write(bytes(data))
    ds = outcome(cfg_for(paths["images"], labels_path=paths["labels"], test_fraction=0.3))
    if ds != "error":
        # accepted only when the header still describes the file exactly
        n = int.from_bytes(bytes(raw["images"][4:8]), "big")
        assert ds.n_train + ds.n_test == n
        assert int(np.prod(ds.input_shape)) * n + 4 + 4 * raw["images"][3] == len(raw["images"])


VALID = ["1 1:0.5 3:1.5", "0 2:-1 3:2e-1", "1 qid:2 1:1 2:1", "0 1:3", "1 2:0.25 # c",
         "0 3:1", "1 1:1 2:2 3:3", "0 2:4"]
TOKEN = st.text(alphabet="0123456789:.-+eEnaifx# ,\t", max_size=12)


@BOUND
@given(edits=st.lists(st.tuples(st.integers(0, 7), st.lists(TOKEN, max_size=5)), max_size=3),
       drop=st.lists(st.integers(0, 7), max_size=3))
def test_mutated_libsvm_lines_are_an_error_or_a_valid_dataset(edits, drop):
    lines = list(VALID)
    for i, toks in edits:                             # replace a line by random tokens
        lines[i] = " ".join(toks)
    lines = [ln for i, ln in enumerate(lines) if i not in set(drop)]
    path = os.path.join(FOLDER, "m.svm")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    ds = outcome(cfg_for(path, test_fraction=0.25, batch_size=1))
    if ds != "error":
        assert np.all(np.isfinite(ds.train.X)) and ds.n_train + ds.n_test >= 2
