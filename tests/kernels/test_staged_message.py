"""backend.StagedMessage: a message assembled in the reusable host buffer,
each device part's copy queued on a copy stream after an event on the
compute stream (so the next part's kernels can be queued meanwhile), and
waited for once, in finish(). The device branch is driven by a stand-in for
CuPy that records the calls; the host branch is what Spar-Reduce-Scatter
uses on the CPU (tests/test_spardl_mpi.py checks the messages' contents)."""
import numpy as np

from mpidsgd.backend import Backend, StagedMessage


def test_host_parts_land_at_their_offsets_in_the_slot_buffer():
    b = Backend("cpu")
    idx = np.array([3, 1], np.int32)
    val = np.array([-0.0, np.nan], np.float64)
    msg = StagedMessage(b, 24, slot="t")
    msg.put(0, idx)
    msg.put(8, val)
    out = msg.finish()
    assert out.tobytes() == idx.tobytes() + val.tobytes()
    again = StagedMessage(b, 24, slot="t").finish()
    assert np.shares_memory(out, again)           # the slot's buffer is reused


def _fake_cupy(log):
    class Arr:
        __cuda_array_interface__ = {}

        def __init__(self, a):
            self.a = a
            self.nbytes = a.nbytes

        def view(self, dtype):
            return Arr(self.a.view(dtype))

        def reshape(self, *shape):
            return Arr(self.a.reshape(*shape))

        def get(self, out=None, stream=None, blocking=True):
            log.append(("get", stream.name, blocking, out.size))
            out[:] = self.a

    class Event:
        def __init__(self, **kw):
            log.append(("event", kw))

        def record(self, stream=None):
            log.append(("record", stream))

    class Stream:
        def __init__(self, non_blocking=False):
            self.name = "copy"
            log.append(("stream", non_blocking))

        def wait_event(self, ev):
            log.append(("wait",))

        def synchronize(self):
            log.append(("sync",))

    class Cuda:
        pass
    cuda = Cuda()
    cuda.Event, cuda.Stream = Event, Stream

    class Cp:
        uint8 = np.uint8

        @staticmethod
        def ascontiguousarray(a):
            return a
    Cp.cuda = cuda
    return Cp, Arr


def test_device_parts_are_copied_in_order_on_a_copy_stream_and_waited_once():
    log = []
    cp, Arr = _fake_cupy(log)
    b = Backend("cpu")
    b.xp = cp                                   # a backend on the stand-in device
    msg = StagedMessage(b, 12, slot="d")
    msg.put(0, Arr(np.array([7], np.int32)))
    msg.put(4, Arr(np.array([2.5], np.float64)))
    assert ("sync",) not in log                 # nothing waited for yet
    assert log == [("event", {"block": False, "disable_timing": True}), ("record", None),
                   ("stream", True), ("wait",), ("get", "copy", False, 4),
                   ("event", {"block": False, "disable_timing": True}), ("record", None),
                   ("wait",), ("get", "copy", False, 8)]
    assert len(msg.keep) == 2                   # alive until their copies finish
    out = msg.finish()
    assert log[-1] == ("sync",) and msg.keep == []
    assert out.tobytes() == np.int32(7).tobytes() + np.float64(2.5).tobytes()
