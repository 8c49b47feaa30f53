"""Running CUDA kernel tests in Numba's simulator (NUMBA_ENABLE_CUDASIM=1).

The simulator must be switched on before numba.cuda is first imported, so a
simulator test file has one launcher test, run by the normal suite, that
starts the same file in a fresh `python -m pytest` with the simulator on
(`run_in_simulator`); in that process the kernel tests run and the launcher
is skipped. There `prepare_simulator()` makes the simulator's barriers cheap
and its shared arrays safe.
"""
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import numpy as np

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = Path(__file__).resolve().parents[2]


def run_in_simulator(test_file, timeout=900):
    """Run `test_file` under pytest in a fresh process with the simulator on;
    fail with its output unless every test there passed."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(test_file)],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


def make_shared_allocation_atomic():
    """The simulator gives a block's threads one shared array per source line
    through an unlocked get-or-create, so two threads switched between the
    get and the create get different arrays. Do the same under a lock."""
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    lock = threading.Lock()
    dynamic = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:
            return dynamic(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe())[-2][0:2])
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


def prepare_simulator():
    """In the simulator process: the block manager busy-polls its threads at
    every barrier, and a short GIL switch interval makes a barrier ~50x
    cheaper; it also makes the shared-array race likely, so that is fixed
    first."""
    make_shared_allocation_atomic()
    sys.setswitchinterval(5e-5)
