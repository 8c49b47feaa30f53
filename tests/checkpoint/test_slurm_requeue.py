"""The Slurm requeue flow of slurm/ with stand-ins for srun, scancel and
scontrol: SIGUSR1 before the time limit checkpoints every rank, the job
requeues itself once, and the requeued job resumes and finishes."""
import json
import os
import signal
import subprocess

from mpidsgd.checkpoint.format import list_checkpoints

from checkpoint_jobs import wait_for

FAKE_SRUN = """#!/bin/bash
echo $$ > "$FAKE_DIR/srun.pid"
while [ "${1#--}" != "$1" ]; do shift; done   # --mpi=pmi2 --ntasks=N ...
exec mpiexec -n "$SLURM_NTASKS" "$@"
"""
FAKE_SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$FAKE_DIR/log"
kill -USR1 "$(cat "$FAKE_DIR/srun.pid")"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE_DIR/log"
"""


def test_slurm_script_checkpoints_on_usr1_requeues_and_resumes(tmp_path):
    """slurm/train.sbatch as Slurm runs it: SIGUSR1 to the batch shell
    (--signal=B:USR1) -> ranks checkpoint and exit 0 -> scontrol requeue;
    the requeued job (same id, same folder) resumes and finishes."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    job = tmp_path / "job.toml"
    job.write_text("\n".join(
        ["[run]", "steps = 400", "eval_every = 0", "log_every = 1", "progress = false",
         "[data]", "n_samples = 512", "n_test = 64", "n_features = 8", "n_classes = 3",
         "batch_size = 16", "[model]", 'name = "mlp"', "hidden = [8]",
         "[algo]", 'name = "sgd"', "lr = 0.05"]) + "\n")
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path),
               SLURM_JOB_ID="4242", SLURM_JOB_NAME="t", SLURM_NTASKS="2",
               SLURM_CPUS_PER_TASK="1", MPIDSGD_OUT=str(out), MPIDSGD_LAUNCHER="srun")
    env.pop("_PYTEST_MPI_CHILD_PROCESS", None)
    script = os.path.join(root, "slurm", "train.sbatch")
    slow = ["--set", 'comm.emulate.compute="fixed"', "--set", "comm.emulate.compute_s=0.02"]
    proc = subprocess.Popen(["bash", script, str(job)] + slow, env=env, cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists()
                 and (out / "metrics.jsonl").stat().st_size > 0, what="the job to train")
        os.kill(proc.pid, signal.SIGUSR1)            # what --signal=B:USR1@120 does
        so, se = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, se
    log = (tmp_path / "log").read_text().splitlines()
    assert log == ["scancel --signal=USR1 4242", "scontrol requeue 4242"]
    summary = json.load(open(out / "summary.json"))
    assert summary["stopped_by"] == "signal" and 0 < summary["steps"] < 400
    ck = list_checkpoints(out / "checkpoints")
    assert [os.path.basename(p) for p in ck] == [f"ckpt-{summary['steps']}.h5"]
    # the requeued job: same id and folder, no signal this time
    r = subprocess.run(["bash", script, str(job)], env=env, cwd=root, text=True,
                       capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {ck[0]} at step {summary['steps']}" in r.stdout
    assert json.load(open(out / "summary.json"))["steps"] == 400
    assert (tmp_path / "log").read_text().splitlines() == log    # not requeued again
