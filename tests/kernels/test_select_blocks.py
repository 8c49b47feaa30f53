"""topk_abs_blocks / ef_select_blocks: the batched API equals the
single-vector ops applied to each block. On the host (numpy, cpu) always;
with CuPy arrays on a GPU ("cupy", skipped without one), including blocks
long enough for the multi-block device path. The CUDA code runs in CPU CI in
the simulator, test_select_cuda_device.py."""
import numpy as np
import pytest

import mpidsgd.kernels as K


def _gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu()
on_gpu = pytest.mark.skipif(not GPU, reason="CuPy tests need a GPU")
IMPLS = ["numpy", "cpu", pytest.param("cupy", marks=on_gpu)]


def _on(impl, *arrays):
    """The arrays as the implementation takes them, and its impl name."""
    if impl == "cupy":
        import cupy
        return [cupy.asarray(a) for a in arrays], "cuda"
    return list(arrays), impl


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _x(n, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    x[::5] = np.round(x[::5])                   # ties at several magnitudes
    return x.astype(dtype)


def same(a, b):
    u = np.uint32 if a.dtype == np.float32 else np.uint64
    return a.shape == b.shape and np.array_equal(a.view(u), b.view(u))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_equal_per_block_ops(impl, dtype):
    # on a GPU also blocks of 70001, past the single-block path's 2^16
    for m in [1000, 70001] if impl == "cupy" else [1000]:
        _check_blocks(impl, dtype, 4, m)


def _check_blocks(impl, dtype, nb, m):
    x = _x(nb * m, dtype, 0)
    (xi,), name = _on(impl, x)
    for k in [0, 1, 37, m]:
        idx, vals = map(_host, K.topk_abs_blocks(xi, nb, k, impl=name))
        assert idx.shape == vals.shape == (nb, k) and idx.dtype == np.int32
        for b in range(nb):
            ridx, rvals = K.topk_abs(x[b * m:(b + 1) * m], k, impl="numpy")
            assert np.array_equal(idx[b], ridx) and same(vals[b], rvals)
    r = _x(nb * m, dtype, 1)
    for zero in (True, False):
        r2 = r.copy()
        (gi, r1), name = _on(impl, x, r.copy())
        idx, vals = map(_host, K.ef_select_blocks(gi, r1, nb, 37, zero=zero, impl=name))
        for b in range(nb):
            s = slice(b * m, (b + 1) * m)
            ridx, rvals = K.ef_select(x[s], r2[s], 37, zero=zero, impl="numpy")
            assert np.array_equal(idx[b], ridx) and same(vals[b], rvals)
        assert same(_host(r1), r2)


@on_gpu
@pytest.mark.parametrize("n", [1000, 300001])
def test_one_read_back_on_the_device(monkeypatch, n):
    """With CuPy arrays a select call synchronises with the host once (its
    status); results stay on the device."""
    import cupy

    from mpidsgd.kernels.cuda import util
    count = [0]
    real = util.Device.host

    def host(self, d):
        count[0] += 1
        return real(self, d)
    monkeypatch.setattr(util.Device, "host", host)
    x = cupy.asarray(_x(n, np.float64, 2))
    r = cupy.zeros_like(x)
    for call in [lambda: K.topk_abs(x, n // 100), lambda: K.ef_select(x, r, n // 100),
                 lambda: K.threshold_select(x, 1.5)]:
        count[0] = 0
        call()
        assert count[0] == 1


def test_blocks_bad_arguments():
    x = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="n_blocks"):
        K.topk_abs_blocks(x, 3, 1)
    with pytest.raises(ValueError, match="n_blocks"):
        K.topk_abs_blocks(x, 0, 1)
    with pytest.raises(TypeError, match="n_blocks"):
        K.topk_abs_blocks(x, 2.0, 1)
    with pytest.raises(ValueError, match="k must satisfy"):
        K.topk_abs_blocks(x, 2, 6)
    with pytest.raises(ValueError, match="NaN or Inf"):
        x[7] = np.inf
        K.topk_abs_blocks(x, 2, 1)
    with pytest.raises(ValueError, match="n_blocks"):
        K.ef_select_blocks(x, x.copy(), 4, 1)
