"""kernels.merge_sum (Numba) against its NumPy reference and a dict-based
definition, bit for bit, including -0.0, shared indices and -1 padding."""
import numpy as np
import pytest

from mpidsgd.kernels import merge_sum
from mpidsgd.kernels.spardl_merge import merge_sum_numpy


def _sel(rng, n, k, dtype, pad=0):
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
    val = rng.standard_normal(k).astype(dtype)
    val[rng.random(k) < 0.1] = dtype(-0.0)
    return np.concatenate((np.full(pad, -1, np.int32), idx)), \
        np.concatenate((np.zeros(pad, dtype), val))


def _definition(ia, va, ib, vb):
    sums = {}
    for i, v in list(zip(ia.tolist(), va)) + list(zip(ib.tolist(), vb)):
        if i != -1:
            sums[i] = sums.get(i, va.dtype.type(0)) + v
    keys = sorted(sums)
    return np.array(keys, np.int64), np.array([sums[i] for i in keys], va.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(12))
def test_merge_sum_matches_reference_bitwise(dtype, case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 200))
    ka, kb = (int(rng.integers(0, n + 1)) for _ in range(2))
    ia, va = _sel(rng, n, ka, dtype, pad=int(rng.integers(0, 3)) if case % 3 == 0 else 0)
    ib, vb = _sel(rng, n, kb, dtype, pad=int(rng.integers(0, 3)) if case % 4 == 0 else 0)
    got_i, got_v = merge_sum(ia, va, ib, vb)
    ref_i, ref_v = merge_sum_numpy(ia, va, ib, vb)
    def_i, def_v = _definition(ia, va, ib, vb)
    assert got_i.tolist() == ref_i.tolist() == def_i.tolist()
    assert got_v.dtype == ref_v.dtype == np.dtype(dtype)
    assert got_v.view(np.uint8).tobytes() == ref_v.view(np.uint8).tobytes()
    assert got_v.view(np.uint8).tobytes() == def_v.view(np.uint8).tobytes()


def test_merge_sum_zero_sign_and_order():
    # a lone -0.0 becomes +0.0 (0 + -0.0); a shared index adds a first, then b
    ia = np.array([-1, 2, 4], np.int32)
    va = np.array([0.0, -0.0, 1e8], np.float32)
    ib = np.array([4, 6], np.int32)
    vb = np.array([1.0, -0.0], np.float32)
    for impl in ("numpy", "cpu"):
        i, v = merge_sum(ia, va, ib, vb, impl=impl)
        assert i.tolist() == [2, 4, 6]
        assert not np.signbit(v[0]) and not np.signbit(v[2])
        assert v[1] == np.float32(1e8) + np.float32(1.0)


def test_merge_sum_rejects_bad_input():
    with pytest.raises(ValueError):
        merge_sum(np.zeros(2, np.int32), np.zeros(3), np.zeros(0, np.int32), np.zeros(0))
    with pytest.raises(ValueError):
        merge_sum(np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.int32), np.zeros(0),
                  impl="cuda")
