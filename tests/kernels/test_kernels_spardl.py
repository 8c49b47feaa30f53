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
                  impl="gpu")


# ---------------------------------------------------------------- restore_outside / densify_blocks
# Oracles: plain Python loops over the definitions (kernels/spardl_residual.py).

from kernel_oracles import (IMPLS, host, impl_name, oracle_densify,  # noqa: E402
                            oracle_restore, same, to_impl)

from mpidsgd.kernels import densify_blocks, restore_outside  # noqa: E402


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["ascending", "shuffled"])
@pytest.mark.parametrize("inside", [False, True])
def test_restore_outside_matches_oracle(impl, dtype, order, inside):
    rng = np.random.default_rng(3)
    n = 5000
    dst = rng.standard_normal(n).astype(dtype)
    for m, kk in [(0, 10), (1, 0), (300, 250), (1200, 40)]:
        idx = np.sort(rng.choice(n, m, replace=False))
        if order == "shuffled":
            rng.shuffle(idx)
        old = rng.standard_normal(m).astype(dtype)
        old[::7] = dtype(-0.0)
        # keep: some of idx (the final support overlaps the logged entries) and others
        keep = np.union1d(rng.choice(idx, min(m, kk // 2), replace=False) if m else [],
                          rng.choice(n, kk - kk // 2, replace=False)).astype(np.int32)
        d, i, o, k = to_impl(impl, dst.copy(), idx.astype(np.int32), old, keep)
        restore_outside(d, i, o, k, inside=inside, impl=impl_name(impl))
        assert same(host(d), oracle_restore(dst, idx, old, keep, inside)), (m, kk)


def test_restore_outside_rejects_bad_input():
    d = np.zeros(10)
    with pytest.raises(ValueError, match="ascending"):
        restore_outside(d, np.array([1], np.int32), np.ones(1), np.array([3, 2], np.int32))
    with pytest.raises(ValueError, match="outside"):
        restore_outside(d, np.array([10], np.int32), np.ones(1), np.array([], np.int32))
    assert not d.any()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["sorted", "padded", "unsorted", "empty"])
def test_densify_blocks_matches_oracle(impl, dtype, case):
    rng = np.random.default_rng(5)
    B, c, m = 5, 997, 40
    n = B * c - 300                       # the last block is partly padding
    idx = np.stack([np.sort(rng.choice(c, m, replace=False)) for _ in range(B)])
    val = rng.standard_normal((B, m)).astype(dtype)
    val[:, ::9] = dtype(-0.0)             # 0 + (-0.0) = +0.0 everywhere
    if case == "padded":
        idx[1, m - 7:] = -1
        idx[B - 1, :3] = -1
    elif case == "unsorted":
        for b in range(B):
            rng.shuffle(idx[b])
    elif case == "empty":
        idx, val = idx[:, :0], val[:, :0]
    idx = idx.astype(np.int32)
    out0 = rng.standard_normal(n).astype(dtype)   # overwritten everywhere
    o, i, v = to_impl(impl, out0.copy(), idx, val)
    densify_blocks(o, i, v, c, 7, impl=impl_name(impl))
    assert same(host(o), oracle_densify(n, idx, val, c, 7))


def test_densify_blocks_rejects_bad_input():
    out = np.zeros(20, np.float32)
    v = np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match="indices"):
        densify_blocks(out, np.array([[10], [0]], np.int32), v, 10, 2)
    with pytest.raises(ValueError, match="elements"):
        densify_blocks(out, np.array([[1], [0]], np.int32), v, 9, 2)
