"""Real training jobs for the checkpoint tests: `mpiexec -n n python -m
mpidsgd.train` on a tiny problem in a subprocess, each tagged so that a test
can find one rank's process and signal it mid-run."""
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid

# a few seconds of training: small data, a small model
TINY = {"run.eval_every": 0, "run.log_every": 1, "run.progress": "false", "data.n_samples": 512,
        "data.n_test": 64, "data.n_features": 8, "data.n_classes": 3, "data.batch_size": 16,
        "model.hidden": "[8]", "algo.name": "sgd", "algo.lr": 0.05, "algo.momentum": 0.9}


def launch(out, sets, resume=None, n=2, tag=None, wait=True):
    """mpiexec -n n python -m mpidsgd.train with TINY + sets; (rc, stdout, stderr)."""
    items = {**TINY, "run.out_dir": json.dumps(str(out)), **sets}
    cmd = ["mpiexec", "-n", str(n), sys.executable, "-m", "mpidsgd.train"]
    cmd += [x for k, v in items.items() for x in ("--set", f"{k}={v}")]
    cmd += ["--resume", resume] if resume else []
    env = dict(os.environ, MPIDSGD_TEST_TAG=tag or uuid.uuid4().hex)
    env.pop("_PYTEST_MPI_CHILD_PROCESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    if not wait:
        return proc
    out_, err = proc.communicate(timeout=600)
    return proc.returncode, out_, err


def rank_pid(tag, rank):
    """PID of the training process with MPIDSGD_TEST_TAG=tag and rank `rank`."""
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/environ", "rb") as fh:
                env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
            with open(f"{d}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if (env.get(b"MPIDSGD_TEST_TAG") == tag.encode() and b"mpidsgd.train" in cmd
                and env.get(b"PMI_RANK") == str(rank).encode() and b"mpiexec" not in cmd):
            return int(d.rsplit("/", 1)[1])
    return None


def wait_for(cond, timeout=120.0, what=""):
    """Poll `cond` every 50 ms; fail the test after `timeout` seconds."""
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def terminate_rank_mid_run(run, sets, n, rank):
    """Launch a run, SIGTERM rank `rank` once metrics.jsonl has a record, and
    wait for every rank to exit: (returncode, stderr)."""
    tag = uuid.uuid4().hex
    proc = launch(run, sets, n=n, tag=tag, wait=False)
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists()
                 and (run / "metrics.jsonl").stat().st_size > 0, what="training to start")
        pid = rank_pid(tag, rank)
        assert pid, f"rank {rank} not found"
        os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err


def one_error_line(err):
    """The single `mpidsgd: error: ...` line of a refused run's stderr."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpidsgd: error: "), err[-3000:]
    return lines[0]
