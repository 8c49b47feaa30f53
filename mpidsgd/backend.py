"""Array backend: numpy or cupy behind `xp`, GPU binding, host staging for MPI.

mpi4py only takes device arrays when MPI itself is CUDA-aware; that is an
explicit switch (`comm.cuda_aware`, default off). Otherwise every device
buffer that MPI touches is staged through a pinned host buffer.
"""
from __future__ import annotations

import numpy as np

# one definition of "lives on the device", shared with the kernels' dispatch
from .kernels.common import is_device_array


def array_module(a):
    """numpy for host arrays, cupy for CuPy arrays."""
    if not is_device_array(a):
        return np
    import cupy
    return cupy.get_array_module(a)


class Backend:
    """`xp` plus the few device operations the rest of the code needs."""

    def __init__(self, device: str = "cpu", cuda_aware: bool = False, local_rank: int = 0):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.cuda_aware = bool(cuda_aware)
        self._pinned = {}
        if device == "cuda":
            import cupy  # imported only when asked for: CPU runs never need it
            n = cupy.cuda.runtime.getDeviceCount()
            if n == 0:
                raise RuntimeError("device = 'cuda' but no GPU is visible")
            # bind before any allocation: node-local rank modulo visible GPUs
            self.gpu = local_rank % n
            cupy.cuda.Device(self.gpu).use()
            self.xp = cupy
        else:
            self.gpu = None
            self.xp = np

    # -- host <-> device ---------------------------------------------------
    def asnumpy(self, a) -> np.ndarray:
        """A host copy (or the array itself when it already is on the host)."""
        if is_device_array(a):
            return a.get()
        return np.asarray(a)

    def asarray(self, a, dtype=None):
        """Move host data to this backend's memory."""
        return self.xp.asarray(a, dtype=dtype)

    def synchronize(self):
        """Wait for queued device work; MPI must never read a buffer still being written."""
        if self.device == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def host_buffer(self, shape, dtype, slot=0):
        """A reusable pinned host buffer of `shape` for staging (plain memory
        on CPU): a view of the one buffer kept per (slot, dtype), grown by
        half again when too small. Sparse messages change size every step, so
        one buffer per size would pin more host memory at every new size. A
        slot must not be reused while a non-blocking operation on it is in
        flight."""
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        size = int(np.prod(shape, dtype=np.int64))
        key = (slot, dtype.str)
        buf = self._pinned.get(key)
        if buf is None or buf.size < size:
            cap = max(size, int(1.5 * buf.size) if buf is not None else 0)
            if self.device == "cuda":
                import cupyx
                buf = cupyx.empty_pinned(cap, dtype)
            else:
                buf = np.empty(cap, dtype)
            self._pinned[key] = buf
        return buf[:size].reshape(shape)

    def needs_staging(self, a) -> bool:
        """Device buffers go through host memory unless MPI is CUDA-aware."""
        return is_device_array(a) and not self.cuda_aware

    def stage_out(self, a, slot=0) -> np.ndarray:
        """Copy a device buffer into a pinned host buffer for MPI to read."""
        host = self.host_buffer(a.shape, a.dtype, slot)
        a.get(out=host)
        return host

    def stage_in(self, host, a):
        """Copy a host buffer MPI wrote back into the device buffer `a`."""
        a.set(host)


class StagedMessage:
    """A message of `nbytes` assembled part by part in a reusable host buffer
    (pinned on the GPU), for MPI to read without a staging copy of its own.

    put(offset, a) copies array a's bytes to that offset. A device array's
    copy is queued on a separate copy stream, after the work already queued
    on the current stream (an event orders it): the caller can queue the
    next part's kernels while this part is copied. finish() waits for the
    copies and returns the uint8 host buffer. The buffer is the backend's
    one for `slot`: reusable once MPI is done with the message."""

    def __init__(self, backend: Backend, nbytes: int, slot):
        self.backend = backend
        self.buf = backend.host_buffer(int(nbytes), np.uint8, slot)
        self.keep = []            # device parts stay alive until copied

    def put(self, offset: int, a):
        view = self.buf[offset:offset + a.nbytes]
        if not is_device_array(a):
            view[:] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
            return
        cp = self.backend.xp
        a = cp.ascontiguousarray(a)
        ready = cp.cuda.Event(block=False, disable_timing=True)
        ready.record()
        stream = self._copy_stream()
        stream.wait_event(ready)
        a.view(cp.uint8).reshape(-1).get(out=view, stream=stream, blocking=False)
        self.keep.append(a)

    def finish(self) -> np.ndarray:
        if self.keep:
            self._copy_stream().synchronize()
            self.keep = []
        return self.buf

    def _copy_stream(self):
        b = self.backend
        if getattr(b, "_copy", None) is None:
            b._copy = b.xp.cuda.Stream(non_blocking=True)
        return b._copy
