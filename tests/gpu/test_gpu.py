"""Training and the sparse collectives on a real GPU (CuPy arrays, the Numba
CUDA kernels, host staging for MPI), against the same on the CPU.

Runs `mpiexec -n 4 python tests/gpu/mpi_check.py` (its docstring lists the
cases: SparDL with every team/SAG combination at P = 1, 2, 4, TopkA, gTop-k,
and every synchronous training algorithm with run.device = "cuda" vs "cpu").
Needs a CUDA GPU and CuPy: skipped where none is visible (the CPU-only CI
machine); on a GPU node `bash .ci/gpu` runs it with the GPU kernel tests and
the benchmarks. The kernels themselves are checked on every machine under
Numba's CUDA simulator (tests/kernels/test_kernels_cuda.py).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _gpu_visible():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _gpu_visible(), reason="needs a CUDA GPU and CuPy")
HERE = Path(__file__).resolve().parent


def test_gpu_runs_match_cpu_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "_PYTEST_MPI_CHILD_PROCESS"}
    env.update(MPIEXEC_TIMEOUT="600", MPIR_CVAR_ENABLE_HEAVY_YIELD="1")
    r = subprocess.run(["mpiexec", "-n", "4", sys.executable, str(HERE / "mpi_check.py"),
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=660,
                       cwd=HERE.parents[1])
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("ok  ", "FAIL"))]
    print("\n".join(lines))
    assert r.returncode == 0, "\n".join(lines)[-6000:] + r.stderr[-3000:]
    assert "all passed" in r.stdout
    # every case of the docstring ran: 9 SparDL cases and 10 training algorithms
    assert sum(ln.startswith("ok   spardl") for ln in lines) == 9
    assert sum(ln.startswith("ok   train ") for ln in lines) >= 10
