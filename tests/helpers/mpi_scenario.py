"""One mpiexec launch shared by several one-claim tests.

An MPI scenario is a function in a test module that every rank calls
collectively with a scratch directory; it returns a JSON-able dict of raw
observations (per-rank values gathered with allgather, counts, bytes, largest
differences) and rank 0's dict is written to a file. A module-scoped fixture
runs the scenario once under `mpiexec -n P` and each claim is a serial test
asserting on the dict, so a failure names the claim that broke while the
suite still pays for one launch:

    @pytest.fixture(scope="module")
    def obs(tmp_path_factory):
        return run_scenario(__file__, "scenario_name", 5, tmp_path_factory)

A rank that raises aborts the whole job (MPI.COMM_WORLD.Abort), and the
launch runs under MPIEXEC_TIMEOUT and a subprocess timeout above it, so a
broken scenario fails the fixture instead of hanging the suite.
"""
import json
import os
import subprocess
import sys

from cli_launch import mpiexec

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)


def run_scenario(module_file, function, nprocs, tmp_path_factory, timeout=300):
    """Run `function` of the test module at `module_file` on `nprocs` ranks:
    rank 0's returned dict (JSON round-tripped)."""
    work = str(tmp_path_factory.mktemp(function))
    out = os.path.join(work, "observations.json")
    target = f"{os.path.abspath(module_file)}:{function}"
    cmd = [mpiexec(), "-n", str(nprocs), sys.executable,
           os.path.join(HERE, "run_scenario.py"), target, out]
    # the module's folder, tests/ and tests/helpers/ are importable in the job
    path = [os.path.dirname(os.path.abspath(module_file)), TESTS, HERE]
    old = os.environ.get("PYTHONPATH")
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(timeout - 30),
           "PYTHONPATH": os.pathsep.join(path + ([old] if old else []))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=work)
    assert proc.returncode == 0 and os.path.exists(out), (
        f"scenario {target} on {nprocs} ranks failed (rc {proc.returncode}):\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    with open(out) as fh:
        return json.load(fh)


# ---------------------------------------------------------------- observations

def allclose_excess(a, b, rtol):
    """Largest |a - b| - rtol |b| (NaN if any is NaN): np.allclose(a, b,
    rtol, atol) holds exactly when this is <= atol, so a scenario records
    one number and the test keeps the original tolerances."""
    import numpy as np
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) - rtol * np.abs(b), initial=-np.inf))


def rank_hashes(a, comm):
    """Every rank's sha256 of array a: equal arrays give equal hashes."""
    import hashlib
    import numpy as np
    return comm.allgather(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
