"""topk_abs_blocks / ef_select_blocks on the host: the batched API equals the
single-vector ops applied to each block (the CUDA form is tested in the
simulator, test_select_cuda_device.py)."""
import numpy as np
import pytest

import mpidsgd.kernels as K


def _x(n, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    x[::5] = np.round(x[::5])                   # ties at several magnitudes
    return x.astype(dtype)


def same(a, b):
    u = np.uint32 if a.dtype == np.float32 else np.uint64
    return a.shape == b.shape and np.array_equal(a.view(u), b.view(u))


@pytest.mark.parametrize("impl", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_equal_per_block_ops(impl, dtype):
    nb, m = 4, 1000
    x = _x(nb * m, dtype, 0)
    for k in [0, 1, 37, m]:
        idx, vals = K.topk_abs_blocks(x, nb, k, impl=impl)
        assert idx.shape == vals.shape == (nb, k) and idx.dtype == np.int32
        for b in range(nb):
            ridx, rvals = K.topk_abs(x[b * m:(b + 1) * m], k, impl="numpy")
            assert np.array_equal(idx[b], ridx) and same(vals[b], rvals)
    r = _x(nb * m, dtype, 1)
    for zero in (True, False):
        r1, r2 = r.copy(), r.copy()
        idx, vals = K.ef_select_blocks(x, r1, nb, 37, zero=zero, impl=impl)
        for b in range(nb):
            s = slice(b * m, (b + 1) * m)
            ridx, rvals = K.ef_select(x[s], r2[s], 37, zero=zero, impl="numpy")
            assert np.array_equal(idx[b], ridx) and same(vals[b], rvals)
        assert same(r1, r2)


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
