"""A full disk (a 2 MiB tmpfs, 4 ranks) during a checkpoint or while
appending metrics.jsonl: one line naming the folder and the bytes, exit 1 on
every rank (no signal), no temporary file or partial record left, the newest
good checkpoint intact, and `--resume auto` continues from it."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from mpidsgd.checkpoint.format import list_checkpoints, step_of, verify

from checkpoint_jobs import TINY, launch, one_error_line


def digest(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture
def small_fs(tmp_path, request):
    """A 2 MiB file system: a tmpfs, mounted directly as root (as in CI);
    otherwise the test reruns inside a user and mount namespace where this
    process is root (`unshare -rm`), and the fixture gives None (the test
    then returns: the rerun was the test). Skipped, saying why, where neither
    works."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        yield rerun_in_namespace(request)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a 2 MiB tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def rerun_in_namespace(request):
    """Run this one test again under `unshare -rm` (root in a namespace of
    its own, so it can mount a tmpfs); fail if it fails there."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode or os.environ.get("MPIDSGD_IN_NAMESPACE"):
        pytest.skip("a full-disk test needs a 2 MiB tmpfs: not root, and no user namespace "
                    f"to mount one in ({(probe.stderr or 'unshare -rm failed').strip()})")
    env = dict(os.environ, MPIDSGD_IN_NAMESPACE="1")
    env.pop("_PYTEST_MPI_CHILD_PROCESS", None)
    r = subprocess.run(["unshare", "-rm", sys.executable, "-m", "pytest", "-q", "-x",
                        "-p", "no:cacheprovider", request.node.nodeid],
                       cwd=str(request.config.rootpath), env=env, capture_output=True,
                       text=True, timeout=900)
    if r.returncode in (126, 127):       # the namespace's root cannot start this Python
        pytest.skip(f"a full-disk test needs a 2 MiB tmpfs: not root, and {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return None


def fill(mnt, leave):
    """Fill the file system at `mnt` up to `leave` bytes free."""
    st = os.statvfs(mnt)
    with open(mnt / "filler", "wb") as fh:
        fh.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))


NO_STATVFS = ("import sys, mpidsgd.checkpoint.manager as m; m.free_bytes = lambda p: None; "
              "from mpidsgd.train import main; sys.exit(main(sys.argv[1:]))")


def launch_c(out, sets, code, resume=None, n=4):
    """launch(), with `python -c code` in place of `python -m mpidsgd.train`."""
    items = {**TINY, "run.out_dir": json.dumps(str(out)), **sets}
    cmd = ["mpiexec", "-n", str(n), sys.executable, "-c", code]
    cmd += [x for k, v in items.items() for x in ("--set", f"{k}={v}")]
    cmd += ["--resume", resume] if resume else []
    env = dict(os.environ)
    env.pop("_PYTEST_MPI_CHILD_PROCESS", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return r.returncode, r.stdout, r.stderr


def train_steps(run):
    recs = [json.loads(ln) for ln in open(run / "metrics.jsonl")]   # every line parses
    return [r["step"] for r in recs if r["kind"] == "train"]


def test_full_disk_during_checkpoint_is_one_line_and_resume_continues(small_fs):
    """4 ranks, checkpoints every 5 steps on a 2 MiB tmpfs filled up after
    ckpt-10: the write of ckpt-15 fails (found by the free-space check, and,
    with that check blinded, by the write itself): every rank exits 1, one
    line names the folder and the bytes, no temporary file is left, ckpt-10
    is untouched, and --resume auto continues from it once there is space."""
    if small_fs is None:
        return          # ran in a namespace of its own (see small_fs)
    run = small_fs / "run"
    ck = run / "checkpoints"
    rc, out, err = launch(run, {"run.steps": 10, "checkpoint.every": 5}, n=4)
    assert rc == 0, err
    before = {p: digest(p) for p in list_checkpoints(ck)}
    assert [os.path.basename(p) for p in before] == ["ckpt-10.h5", "ckpt-5.h5"]
    fill(small_fs, 16 * 1024)
    sets = {"run.steps": 30, "checkpoint.every": 5}
    for how, (rc, out, err) in (("free-space check", launch(run, sets, resume="auto", n=4)),
                                ("failed write", launch_c(run, sets, NO_STATVFS, resume="auto"))):
        assert rc == 1, (how, err[-3000:])
        line = one_error_line(err)
        assert f"cannot write checkpoint ckpt-15.h5: no space left in {ck}" in line, (how, line)
        assert re.search(r"the checkpoint needs about [\d,]+ bytes", line), line
        assert "ckpt-10.h5" in line and "--resume auto" in line, line
        assert sorted(os.listdir(ck)) == ["ckpt-10.h5", "ckpt-5.h5"], (how, os.listdir(ck))
        assert {p: digest(p) for p in list_checkpoints(ck)} == before, how
    os.remove(small_fs / "filler")
    rc, out, err = launch(run, sets, resume="auto", n=4)
    assert rc == 0, err
    assert f"resumed from {ck / 'ckpt-10.h5'} at step 10" in out
    assert json.load(open(run / "summary.json"))["steps"] == 30
    assert train_steps(run) == list(range(1, 31))


def test_full_disk_while_appending_metrics_stops_every_rank_cleanly(small_fs, tmp_path):
    """metrics.jsonl on a full tmpfs, checkpoints elsewhere: the failed
    append stops every rank (exit 1, one line naming the folder and bytes),
    no partial record is left, no checkpoint newer than the last record is
    written, and --resume auto gives one record per step once there is space."""
    if small_fs is None:
        return          # ran in a namespace of its own (see small_fs)
    run, ck = small_fs / "run", tmp_path / "ck"
    sets = {"checkpoint.every": 5, "checkpoint.dir": json.dumps(str(ck))}
    rc, out, err = launch(run, {**sets, "run.steps": 10}, n=4)
    assert rc == 0, err
    fill(small_fs, 8 * 1024)
    rc, out, err = launch(run, {**sets, "run.steps": 400}, resume="auto", n=4)
    assert rc == 1, err[-3000:]
    line = one_error_line(err)
    assert f"cannot append to {run / 'metrics.jsonl'}: no space left in {run}" in line, line
    assert re.search(r"the record needs \d+ bytes, \d+ bytes free", line), line
    assert "--resume auto" in line, line
    last = train_steps(run)[-1]
    newest = list_checkpoints(ck)[0]
    assert 10 < last < 400 and step_of(newest) <= last, (last, newest)
    assert all(not verify(p)[2] for p in list_checkpoints(ck))
    os.remove(small_fs / "filler")
    rc, out, err = launch(run, {**sets, "run.steps": last + 20}, resume="auto", n=4)
    assert rc == 0, err
    assert f"resumed from {newest} at step {step_of(newest)}" in out
    assert train_steps(run) == list(range(1, last + 21))
