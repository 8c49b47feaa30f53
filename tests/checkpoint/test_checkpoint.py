"""Checkpoint files and crash behaviour of real jobs (mpiexec subprocesses):

- value encoding round trips (every kind a state_dict may hold), no pickle;
- `python -m mpidsgd.checkpoint info`: layout, attributes, checksum verdict;
- SIGKILL while a (deliberately slow) checkpoint is being written leaves every
  earlier checkpoint valid and `--resume auto` continues from the newest;
- SIGTERM to one rank of a running job: all ranks checkpoint at the same step
  and exit 0; `--resume auto` finishes the run;
- diverged parameters: a clear error, nonzero exit, the good checkpoint kept;
- a damaged `--resume FILE`: exit 2 and one line;
- an unwritable checkpoint.dir: exit 2 and one line before the first step.

The Slurm requeue flow is in test_slurm_requeue.py, full disks in
test_full_disk.py.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from mpidsgd.checkpoint.format import (decode, encode, info, list_checkpoints, pack, unpack,
                                       verify)

from checkpoint_jobs import launch, one_error_line, terminate_rank_mid_run, wait_for


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-rank run of 10 steps with checkpoints at 5 and 10."""
    out = tmp_path_factory.mktemp("trained")
    rc, o, e = launch(out, {"run.steps": 10, "checkpoint.every": 5})
    assert rc == 0, e
    return out


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def damage(path, dataset="shared/params"):
    with h5py.File(path, "r") as f:
        off = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(off + 4)
        b = fh.read(4)
        fh.seek(off + 4)
        fh.write(bytes(x ^ 0x5A for x in b))


# -- encoding ------------------------------------------------------------------------
VALUES = [np.arange(7, dtype=np.float32), np.zeros((2, 3), np.float64), np.array(3.5),
          np.zeros(0, np.int32), np.array([1, -2], np.int8), 7, -2**63, 1.25, True, False,
          "gossip", "", None, np.int64(9), np.float32(0.1), np.uint32(5), np.bool_(True)]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_encode_decode_round_trip_keeps_value_type_and_bits(value):
    arr, kind, shape = encode(value)
    assert arr.ndim >= 1
    back = decode(arr, kind, shape)
    if isinstance(value, np.ndarray):
        assert isinstance(back, np.ndarray) and back.dtype == value.dtype
        assert back.shape == value.shape and np.array_equal(back, value)
    else:
        assert type(back) is type(value) and (back == value or (value is None and back is None))


def test_device_arrays_are_copied_to_the_host():
    from mpidsgd.backend import Backend
    from mpiutil import FakeDeviceArray
    host = np.arange(5, dtype=np.float32)
    arr, kind, shape = encode(FakeDeviceArray(host), Backend("cpu").asnumpy)
    assert kind == "array" and isinstance(arr, np.ndarray) and np.array_equal(arr, host)
    header, payload = pack({"r": FakeDeviceArray(host)}, Backend("cpu").asnumpy)
    assert np.array_equal(unpack(header, payload)["r"], host)


def test_pack_unpack_round_trips_every_kind():
    flat = {f"k{i}": v for i, v in enumerate(VALUES)}
    header, payload = pack(flat)
    back = unpack(header, payload)
    for k, v in flat.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(back[k], v) and back[k].dtype == v.dtype
        else:
            assert type(back[k]) is type(v) and (back[k] == v or v is None)


def test_encode_refuses_an_integer_beyond_int64():
    with pytest.raises(ValueError, match="int64"):
        encode(2**64)


def test_encode_refuses_object_arrays():
    with pytest.raises(TypeError, match="object"):
        encode(np.array([{}], dtype=object))


# -- info ------------------------------------------------------------------------------
def test_info_prints_layout_and_attributes_of_a_valid_file(trained, capsys):
    path = os.path.join(trained, "checkpoints", "ckpt-10.h5")
    assert info(path) == 0
    out = capsys.readouterr().out
    for text in ("algorithm = sgd", "world_size = 2", "step = 10", "format_version = 2",
                 "mpidsgd_version = ", "/shared/params", "/shared/opt/momentum_buf",
                 "/ranks/1/data/pos", "/ranks/0/comm/train", "[algo]",
                 "verdict: valid, all "):
        assert text in out, text
    assert "CHECKSUM FAILED" not in out


def test_info_names_the_damaged_dataset_and_exits_1(trained, tmp_path):
    bad = str(tmp_path / "ckpt-10.h5")
    shutil.copy(os.path.join(trained, "checkpoints", "ckpt-10.h5"), bad)
    damage(bad)
    r = subprocess.run([sys.executable, "-m", "mpidsgd.checkpoint", "info", bad],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "/shared/params" in r.stdout and "CHECKSUM FAILED" in r.stdout
    assert "verdict: DAMAGED" in r.stdout


def test_info_of_a_missing_file_exits_2(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "mpidsgd.checkpoint", "info",
                              str(tmp_path / "nope.h5")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_every_dataset_is_numeric_no_pickle(trained):
    with h5py.File(os.path.join(trained, "checkpoints", "ckpt-5.h5"), "r") as f:
        def visit(name, obj):
            if hasattr(obj, "dtype"):
                assert obj.dtype.kind in "biuf", name
        f.visititems(visit)


def test_every_dataset_carries_a_checksum_that_verifies(trained):
    path = os.path.join(trained, "checkpoints", "ckpt-5.h5")
    attrs, datasets, problems = verify(path)
    assert not problems and datasets
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if hasattr(obj, "dtype"):
                assert obj.fletcher32, name
        f.visititems(visit)


def test_a_file_holds_every_rank_and_its_step(trained):
    with h5py.File(os.path.join(trained, "checkpoints", "ckpt-5.h5"), "r") as f:
        assert f.attrs["world_size"] == 2 and f.attrs["step"] == 5
        assert sorted(f["ranks"]) == ["0", "1"]


# -- crash safety ------------------------------------------------------------------------
def test_sigkill_during_slow_write_keeps_earlier_checkpoints(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    ck = run / "checkpoints"
    before = {p: digest(p) for p in list_checkpoints(ck)}
    proc = launch(run, {"run.steps": 30, "checkpoint.every": 5,
                        "debug.slow_checkpoint_s": 120.0}, resume="auto", wait=False)
    try:
        wait_for(lambda: (ck / ".ckpt-15.h5.tmp").exists(), what="the slow write")
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert {p: digest(p) for p in list_checkpoints(ck)} == before
    assert not (ck / "ckpt-15.h5").exists()
    assert all(not verify(p)[2] for p in before)
    (ck / ".ckpt-17.h5.tmp").write_bytes(b"partial")    # another interrupted write
    rc, out, err = launch(run, {"run.steps": 30, "checkpoint.every": 5}, resume="auto")
    assert rc == 0, err
    assert f"resumed from {ck / 'ckpt-10.h5'} at step 10" in out
    assert json.load(open(run / "summary.json"))["steps"] == 30
    assert [os.path.basename(p) for p in list_checkpoints(ck)] == \
        ["ckpt-30.h5", "ckpt-25.h5", "ckpt-20.h5"]          # keep_last = 3
    assert sorted(os.listdir(ck)) == ["ckpt-20.h5", "ckpt-25.h5", "ckpt-30.h5"]  # no .tmp left


def test_sigterm_to_one_rank_checkpoints_all_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    slow = {"run.steps": 400, "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.02}
    rc, err = terminate_rank_mid_run(run, slow, n=2, rank=1)
    assert rc == 0, err
    summary = json.load(open(run / "summary.json"))
    stopped = summary["steps"]
    assert summary["stopped_by"] == "signal" and 0 < stopped < 400
    ck = list_checkpoints(run / "checkpoints")
    assert [os.path.basename(p) for p in ck] == [f"ckpt-{stopped}.h5"] and not verify(ck[0])[2]
    with h5py.File(ck[0], "r") as f:      # every rank stopped at the same step boundary
        assert [int(f[f"ranks/{r}/data/pos"][0]) for r in (0, 1)] == [stopped % 16] * 2
    rc, out, err = launch(run, {"run.steps": 400}, resume="auto")
    assert rc == 0, err
    assert f"at step {stopped}" in out
    assert json.load(open(run / "summary.json"))["steps"] == 400
    steps = [json.loads(ln)["step"] for ln in open(run / "metrics.jsonl")
             if json.loads(ln)["kind"] == "train"]
    assert steps == list(range(1, 401))           # one record per step, none twice


def test_diverged_parameters_stop_with_error_and_keep_good_checkpoint(trained, tmp_path, monkeypatch):
    # algo.lr = inf is refused at start-up now; a finite 1e300 overflows the
    # float32 step instead, and NumPy's overflow warning is not the error line
    monkeypatch.setenv("PYTHONWARNINGS", "ignore::RuntimeWarning")
    run = copy_run(trained, tmp_path / "run")
    good = run / "checkpoints" / "ckpt-10.h5"
    before = digest(good)
    rc, out, err = launch(run, {"run.steps": 30, "checkpoint.every": 1, "algo.lr": "1e300"},
                          resume="auto")
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "non-finite parameters at step 11" in lines[0]
    assert "ckpt-10.h5" in lines[0]
    assert digest(good) == before
    assert [os.path.basename(p) for p in list_checkpoints(run / "checkpoints")] == \
        ["ckpt-10.h5", "ckpt-5.h5"]
    # without checkpoints the loss check stops it: a clear message, nonzero exit
    rc, out, err = launch(tmp_path / "nock", {"run.steps": 30, "algo.lr": "1e300"})
    assert rc != 0 and "non-finite training loss" in err and "lower algo.lr" in err


def test_damaged_resume_file_exits_2_with_one_line(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    bad = run / "checkpoints" / "ckpt-10.h5"
    damage(bad)
    rc, out, err = launch(run, {"run.steps": 30}, resume=str(bad))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("mpidsgd: error: --resume") and "damaged" in lines[0]



def test_unwritable_checkpoint_dir_exits_2_before_the_first_step(tmp_path):
    """A file where checkpoint.dir should be: one line at start-up on 4 ranks,
    exit 2, no step taken (before, the run trained up to its first checkpoint)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = tmp_path / "run"
    rc, out, err = launch(run, {"run.steps": 30, "checkpoint.every": 5,
                                "checkpoint.dir": json.dumps(str(blocker / "ck"))}, n=4)
    assert rc == 2, err
    line = one_error_line(err)
    assert f"checkpoint.dir {blocker / 'ck'} is not writable" in line, line
    assert (run / "metrics.jsonl").read_text() == ""
