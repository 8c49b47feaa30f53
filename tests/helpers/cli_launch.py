"""`python -m mpidsgd.train` in a subprocess, as a user starts it: serially or
under mpiexec, with a subprocess timeout and MPIEXEC_TIMEOUT below it."""
import os
import subprocess
import sys

# a few seconds of training: small data, a small model, six steps
TINY = ["--set", "data.n_samples=512", "--set", "data.n_test=64", "--set", "data.n_features=8",
        "--set", "model.hidden=[8]", "--set", "run.steps=6", "--set", "run.eval_every=0"]


def mpiexec():
    """The venv's mpiexec (the mpich extra's) if there is one, else PATH's."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def launch(args, n=None, cwd=None, timeout=300):
    """Run the train CLI with `args` (under mpiexec -n n if n): CompletedProcess."""
    cmd = [sys.executable, "-m", "mpidsgd.train", *args]
    if n is not None:
        cmd = [mpiexec(), "-n", str(n), *cmd]
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(timeout - 30)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
