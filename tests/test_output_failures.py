"""Outputs that cannot be written or read: each ends in one line or is
survived, never in a traceback.

- run.out_dir/config.toml that cannot be written: one line, exit 1, every rank;
- metrics.jsonl that cannot be rewritten when a resume rewinds it: the old
  file stays whole and the run stops with the reason (every rank at its
  first poll, as for a failed append);
- a reader of stdout that leaves (`python -m mpidsgd.train | head -2`): the
  run finishes and writes its records.
"""
import errno
import json
import os
import subprocess
import sys
from types import SimpleNamespace

from mpidsgd import reporting

TINY = ["run.steps=40", "run.eval_every=10", "run.log_every=1", "data.n_samples=512",
        "data.n_test=64", "data.n_features=8", "data.n_classes=3", "data.batch_size=16",
        "model.hidden=[8]", "algo.name=\"sgd\"", "algo.lr=0.05"]


def train_cmd(out, n=None, extra=()):
    sets = TINY + [f"run.out_dir={json.dumps(str(out))}", *extra]
    cmd = [sys.executable, "-m", "mpidsgd.train"] + [x for s in sets for x in ("--set", s)]
    return (["mpiexec", "-n", str(n)] + cmd) if n else cmd


def clean_env():
    env = dict(os.environ)
    env.pop("_PYTEST_MPI_CHILD_PROCESS", None)
    return env


def test_unwritable_config_toml_is_one_line_exit_1_on_every_rank(tmp_path):
    out = tmp_path / "run"
    (out / "config.toml").mkdir(parents=True)      # a folder where the file goes
    r = subprocess.run(train_cmd(out, n=2), capture_output=True, text=True, env=clean_env(),
                       timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"mpidsgd: error: cannot write {out / 'config.toml'}: "), lines
    assert "Traceback" not in r.stdout + r.stderr
    assert not (out / "metrics.jsonl").exists()     # it stopped before the first step


def test_a_failed_rewind_keeps_metrics_whole_and_stops_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    topo = SimpleNamespace(is_root=True)
    first = reporting.Log(topo, str(out))
    for s in range(1, 6):
        first.record(kind="train", step=s, loss=1.0 / s)
    first.close()
    before = (out / "metrics.jsonl").read_text()

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(reporting, "write_text", full_disk)
    log = reporting.Log(topo, str(out), append=True)
    log.rewind(3)
    assert log.failed is not None and log.failed.startswith(
        f"cannot rewrite {out / 'metrics.jsonl'}: no space left in {out}"), log.failed
    log.record(kind="train", step=4, loss=0.0)      # a failed log writes nothing more
    log.close()
    assert (out / "metrics.jsonl").read_text() == before


def test_rewind_drops_the_records_after_the_resumed_step(tmp_path):
    out = tmp_path / "run"
    topo = SimpleNamespace(is_root=True)
    log = reporting.Log(topo, str(out))
    for s in range(1, 6):
        log.record(kind="train", step=s, loss=1.0)
    log.record(kind="final", step=5, loss=1.0)
    log.rewind(3)
    log.close()
    steps = [json.loads(ln)["step"] for ln in open(out / "metrics.jsonl")]
    assert steps == [1, 2, 3]


def test_a_reader_leaving_stdout_does_not_stop_the_run(tmp_path):
    """One process (mpiexec itself dies of a closed pipe: docs/failures.md)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, extra=["run.progress=true"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    proc.stdout.readline()
    proc.stdout.close()                              # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err[-3000:]
    assert "Traceback" not in err and "BrokenPipe" not in err, err[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["steps"] == 40
    recs = [json.loads(ln) for ln in open(out / "metrics.jsonl")]
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, 41))
