"""asgd checkpoints through the CLI (mpiexec, 3 ranks: server + 2 workers):

- kill -9 of the whole job mid-run: `--resume auto` continues from the newest
  checkpoint and applies exactly run.steps updates in all; every checkpoint
  describes a quiescent state (server version = pushes the leaders sent =
  pushes the server counted per source);
- SIGTERM to one worker: every rank quiesces, one checkpoint, exit 0; the
  resumed run finishes, and metrics.jsonl has one record per server update,
  none twice.
"""
import json
import os
import signal

import h5py

from mpidsgd.checkpoint.format import list_checkpoints, verify
from checkpoint_jobs import launch, terminate_rank_mid_run, wait_for

ASGD = {"algo.name": "asgd", "algo.momentum": 0.5, "run.steps": 300,
        "comm.emulate.compute": '"fixed"', "comm.emulate.compute_s": 0.01}


def quiescent(path, P=3):
    """Server version = Σ pushes the leaders sent = Σ pushes counted per source."""
    with h5py.File(path, "r") as f:
        version = int(f["ranks/0/algo/version"][0])
        per_src = f["ranks/0/algo/from_rank"][()]
        sent = [int(f[f"ranks/{r}/algo/pushes"][0]) for r in range(1, P)]
        step = int(f.attrs["step"])
    return version == step == sum(sent) and list(per_src[1:]) == sent and per_src[0] == 0


def test_kill_9_mid_run_then_resume_auto(tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints"
    sets = {**ASGD, "checkpoint.every": 40, "checkpoint.keep_last": 0}
    proc = launch(run, sets, n=3, wait=False)
    try:
        wait_for(lambda: len(list_checkpoints(ck)) >= 2, what="two checkpoints")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    files = list_checkpoints(ck)
    assert files and all(quiescent(p) for p in files if not verify(p)[2])
    newest = [p for p in files if not verify(p)[2]][0]
    with h5py.File(newest, "r") as f:
        at = int(f.attrs["step"])
    rc, out, err = launch(run, sets, n=3, resume="auto")
    assert rc == 0, err
    assert f"at step {at}" in out
    s = json.load(open(run / "summary.json"))
    assert s["steps"] == s["server_updates"] == 300
    assert sum(s["staleness_hist"]) == 300        # the histogram came back with the state
    assert all(quiescent(p) for p in list_checkpoints(ck))


def test_sigterm_to_one_worker_checkpoints_all_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    rc, err = terminate_rank_mid_run(run, ASGD, n=3, rank=2)
    assert rc == 0, err
    s = json.load(open(run / "summary.json"))
    stopped = s["steps"]
    assert s["stopped_by"] == "signal" and 0 < stopped < 300
    ck = list_checkpoints(run / "checkpoints")
    assert [os.path.basename(p) for p in ck] == [f"ckpt-{stopped}.h5"] and quiescent(ck[0])
    rc, out, err = launch(run, ASGD, n=3, resume="auto")
    assert rc == 0, err
    assert f"at step {stopped}" in out
    s = json.load(open(run / "summary.json"))
    assert s["steps"] == s["server_updates"] == 300
    steps = [json.loads(ln)["step"] for ln in open(run / "metrics.jsonl")
             if json.loads(ln)["kind"] == "train"]
    assert steps == list(range(1, 301))           # one record per update, none twice
