"""The simulator fix in tests/helpers/cudasim.py: a device function's `cuda`
global stays the fake module while any thread of the launch is inside it.

Replays, in order, the interleaving that failed a CI run: thread A enters
a device function, thread B enters while A's swap is in force, A leaves,
and B reads `cuda.threadIdx`."""
import numba.cuda
import pytest

from cudasim import counted_module_swap


@pytest.fixture
def fn():
    globs = {"cuda": numba.cuda, "__builtins__": __builtins__}
    exec("def device_function():\n    return cuda\n", globs)
    return globs["device_function"]


def test_fake_module_stays_while_a_later_thread_is_inside(fn):
    swapped, fake = counted_module_swap(), object()
    a, b = swapped(fn, fake), swapped(fn, fake)
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert fn() is fake
    b.__exit__(None, None, None)
    assert fn() is numba.cuda


def test_a_new_launch_replaces_the_fake_module_of_a_failed_one(fn):
    swapped, old, new = counted_module_swap(), object(), object()
    lingering = swapped(fn, old)
    lingering.__enter__()           # a thread of an aborted launch, not yet out
    with swapped(fn, new):
        assert fn() is new
        lingering.__exit__(None, None, None)
        assert fn() is new
    assert fn() is numba.cuda
