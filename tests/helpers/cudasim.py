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
from contextlib import contextmanager
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


def counted_module_swap():
    """A context manager like the simulator's `swapped_cuda_module`, safe when
    a block's threads enter and leave a device function at different times.

    The simulator puts its fake `cuda` module into a function's globals on
    entry and puts the saved value back on exit, once per thread. A thread
    that enters while another thread's swap is in force saves the fake module,
    and the first thread's exit puts the real module back under it: its next
    `cuda.threadIdx` fails. Here the first thread in swaps and the last one
    out restores, per globals dict."""
    from numba import cuda

    lock = threading.Lock()
    held = {}               # id(globals) -> [threads inside, saved, fake in force]

    @contextmanager
    def swapped(fn, fake_cuda_module):
        globs = fn.__globals__
        with lock:
            entry = held.get(id(globs))
            if entry is None:
                saved = {k: v for k, v in globs.items() if v is cuda}
                entry = held[id(globs)] = [0, saved, None]
            if entry[2] is not fake_cuda_module:
                # a new launch (threads of a failed one may linger inside)
                globs.update((k, fake_cuda_module) for k in entry[1])
                entry[2] = fake_cuda_module
            entry[0] += 1
        try:
            yield
        finally:
            with lock:
                entry[0] -= 1
                if entry[0] == 0:
                    globs.update(entry[1])
                    del held[id(globs)]

    return swapped


def make_module_swap_counted():
    from numba.cuda.simulator import kernel, kernelapi
    kernel.swapped_cuda_module = kernelapi.swapped_cuda_module = counted_module_swap()


def prepare_simulator():
    """In the simulator process: the block manager busy-polls its threads at
    every barrier, and a short GIL switch interval makes a barrier ~50x
    cheaper; it also makes the simulator's two races likely (shared arrays,
    module swaps), so those are fixed first."""
    make_shared_allocation_atomic()
    make_module_swap_counted()
    sys.setswitchinterval(5e-5)
