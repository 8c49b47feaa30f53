"""kernels.momentum_step: the SGD-with-momentum update of mpidsgd/optim.py.

- the Numba CPU kernel gives the NumPy reference's bits (dtypes, weight
  decay, Nesterov, subnormal, signed-zero, NaN and Inf entries);
- momentum below the smallest normal number is flushed to zero, and nothing
  at or above it is touched; a decaying entry never becomes subnormal;
- away from subnormals the optimizer gives exactly what the plain NumPy
  update (the code before the kernel) gives, step after step.
"""
import numpy as np
import pytest

from mpidsgd import kernels as K
from mpidsgd.optim import SGD

DTYPES = [np.float32, np.float64]


def vectors(dtype, n=1003, seed=0):
    rng = np.random.default_rng(seed)
    x, g, v = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    tiny = np.finfo(dtype).tiny
    v[::7], v[3::11], g[::7], g[3::11] = tiny / 3, -tiny / 5, 0, 0
    v[5], v[6], x[8], g[9] = np.nan, -np.inf, np.inf, np.nan
    v[10], g[10] = -0.0, -0.0
    return x, g, v


def bits(a):
    return a.view(np.uint8)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # the NaN and Inf entries
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.01])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_kernel_gives_the_references_bits(dtype, wd, nesterov):
    x, g, v = vectors(dtype)
    ref, cpu = [x.copy(), v.copy()], [x.copy(), v.copy()]
    K.momentum_step(ref[0], g, ref[1], 0.05, 0.9, wd=wd, nesterov=nesterov,
                    work=np.empty_like(x), impl="numpy")
    K.momentum_step(cpu[0], g, cpu[1], 0.05, 0.9, wd=wd, nesterov=nesterov, impl="cpu")
    assert np.array_equal(bits(ref[0]), bits(cpu[0])) and np.array_equal(bits(ref[1]), bits(cpu[1]))
    assert not np.array_equal(cpu[0], x)


@pytest.mark.parametrize("impl", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_below_the_smallest_normal_is_flushed_and_nothing_else(dtype, impl):
    tiny = np.finfo(dtype).tiny
    v = np.array([tiny / 2, -tiny / 3, tiny, -tiny, tiny * 1.5, 1.0, 0.0], dtype)
    x, g = np.zeros_like(v), np.zeros_like(v)
    K.momentum_step(x, g, v, 0.1, 1.0, work=np.empty_like(v), impl=impl)   # mu = 1: v stays
    np.testing.assert_array_equal(v, np.array([0, 0, tiny, -tiny, tiny * 1.5, 1.0, 0.0], dtype))
    assert np.signbit(v[1]) and not np.signbit(v[0])         # the sign is kept


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_decaying_entry_skips_the_subnormal_range(dtype):
    v = np.array([1e-2, 1.0], dtype)
    x, g = np.ones_like(v), np.zeros_like(v)
    tiny = np.finfo(dtype).tiny
    for _ in range(8000):
        K.momentum_step(x, g, v, 1e-3, 0.9)
        assert not ((np.abs(v) < tiny) & (v != 0)).any(), v
    assert (v == 0).all()


def old_update(params, grad, buf, lr, momentum, wd, nesterov, work):
    """The NumPy update mpidsgd/optim.py ran before the kernel."""
    f = params.dtype.type
    d = grad
    if wd:
        d = work
        np.multiply(params, f(wd), out=d)
        d += grad
    mu = f(momentum)
    buf *= mu
    buf += d
    if nesterov:
        if d is not work:
            work[...] = d
            d = work
        d += mu * buf
    else:
        d = buf
    params -= f(lr) * d


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_optimizer_steps_as_the_plain_numpy_update(dtype, wd, nesterov):
    rng = np.random.default_rng(3)
    n = 4097
    opt = SGD(n, dtype, np, momentum=0.9, nesterov=nesterov, weight_decay=wd)
    x = rng.standard_normal(n).astype(dtype)
    y, buf, work = x.copy(), np.zeros(n, dtype), np.empty(n, dtype)
    for t in range(50):
        g = rng.standard_normal(n).astype(dtype)
        opt.step(x, g, 0.01 * (1 + t % 3))
        old_update(y, g, buf, 0.01 * (1 + t % 3), 0.9, wd, nesterov, work)
        assert np.array_equal(bits(x), bits(y)), t
    np.testing.assert_array_equal(opt.buf, buf)


def test_bad_arguments_are_refused():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="same dtype and shape"):
        K.momentum_step(x, np.zeros(5, np.float32), np.zeros(4, np.float32), 0.1, 0.9)
    with pytest.raises(TypeError, match="dtype"):
        K.momentum_step(np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64), 0.1, 0.9)
    with pytest.raises(ValueError, match="needs `work`"):
        K.momentum_step(x, x.copy(), x.copy(), 0.1, 0.9, wd=0.1, impl="numpy")
    with pytest.raises(ValueError, match="C-contiguous"):
        K.momentum_step(np.zeros(8, np.float32)[::2], x, x.copy(), 0.1, 0.9)
