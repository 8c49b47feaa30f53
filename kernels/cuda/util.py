"""CUDA plumbing for the kernels: where a call's arrays live, launch sizes.

Imported only on the first CUDA call (it imports numba.cuda). Two modes:
- CuPy inputs: kernels take the CuPy arrays directly (CUDA array interface),
  run on CuPy's current stream, and results are CuPy arrays;
- NumPy inputs with impl="cuda": copied to the device (the simulator's fake
  device under NUMBA_ENABLE_CUDASIM=1) and back. In-place arguments are
  copied back into the caller's array.
"""
import numpy as np
from numba import cuda
from numba.core import config

SIM = bool(config.ENABLE_CUDASIM)
# threads per block; the simulator runs every thread as a Python thread
THREADS = 16 if SIM else 256
MAX_BLOCKS = 3 if SIM else 1024     # grid-stride loops cap the grid


def is_cupy(a):
    return type(a).__module__.split(".")[0] == "cupy"


def blocks(n, per_block=THREADS, cap=MAX_BLOCKS):
    """Blocks for n items, per_block items each, at most `cap` (grid-stride)."""
    return max(1, min(cap, -(-n // per_block)))


class Device:
    """The arrays of one call: device copies, allocation, results."""

    def __init__(self, *arrays):
        self.cupy = any(is_cupy(a) for a in arrays)
        if self.cupy:
            import cupy
            self.xp = cupy
            ptr = cupy.cuda.get_current_stream().ptr
            # 0 = the legacy default stream, the same one for CuPy and Numba
            self.stream = cuda.external_stream(ptr) if ptr else 0
        else:
            self.xp = None
            self.stream = 0

    def sync(self):
        if self.stream == 0:
            cuda.synchronize()
        else:
            self.stream.synchronize()

    def put(self, a):
        """The device array for input a (a itself when it is already on it)."""
        if self.cupy:
            return self.xp.ascontiguousarray(self.xp.asarray(a))
        return cuda.to_device(np.ascontiguousarray(a), stream=self.stream)

    def empty(self, n, dtype):
        if self.cupy:
            return self.xp.empty(n, dtype)
        return cuda.device_array(n, dtype, stream=self.stream)

    def zeros(self, n, dtype):
        if self.cupy:
            return self.xp.zeros(n, dtype)
        return cuda.to_device(np.zeros(n, dtype), stream=self.stream)

    def host(self, d):
        """A NumPy copy of device array d (synchronises)."""
        if self.cupy:
            self.sync()
            return self.xp.asnumpy(d)
        out = d.copy_to_host(stream=self.stream)
        self.sync()
        return out

    def result(self, d):
        """What the caller gets: CuPy stays on the device, NumPy comes back."""
        return d if self.cupy else self.host(d)

    def write_back(self, d, a):
        """Copy device array d into the caller's array a (in-place arguments)."""
        if self.cupy:
            if d is not a:
                a[...] = d
        else:
            d.copy_to_host(a, stream=self.stream)
            self.sync()
