"""Kernels: every implementation against independent oracles, bit for bit.

Implementations: "numpy" (reference), "cpu" (Numba), and "cupy" (the Numba
CUDA kernels through CuPy arrays; skipped without a GPU). The CUDA kernels on
the CPU simulator are in test_kernels_cuda.py. The oracles (in
tests/helpers/kernel_oracles.py) are written differently from every
implementation (sort-based top-k, in-order Python loops), so a wrong tie rule
or a dropped duplicate fails here.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import mpidsgd.kernels as K
from mpidsgd.kernels import scatter
from mpidsgd.kernels.cpu import scatter as cpu_scatter
from mpidsgd.kernels.cpu import select as cpu_select
from kernel_oracles import (DTYPES, IMPLS, KINDS, host, impl_name, ks, oracle_ef, oracle_mix,
                            oracle_scatter, oracle_threshold, oracle_topk, same, to_impl, vector)


# ---------------------------------------------------------------- topk_abs

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [0, 1, 7, 511, 513, 1000, 40001])
def test_topk_abs_matches_oracle(impl, dtype, kind, n):
    x = vector(kind, n, dtype, seed=n)
    (xi,) = to_impl(impl, x)
    for k in ks(n):
        idx, vals = K.topk_abs(xi, k, impl=impl_name(impl))
        ridx, rvals = oracle_topk(x, k)
        idx, vals = host(idx), host(vals)
        assert idx.dtype == np.int32 and vals.dtype == dtype
        assert np.array_equal(idx, ridx), (kind, n, k)
        assert same(vals, rvals), (kind, n, k)


@pytest.mark.parametrize("nchunks", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_chunks_merge_in_index_order(nchunks, dtype):
    # the public call uses one chunk per Numba thread; drive several directly
    for kind in ["normal", "equal", "few"]:
        x = vector(kind, 70001, dtype, seed=nchunks)
        for k in [1, 700, 23334, 70001]:
            idx, vals = cpu_select.select_topk(x, k, nchunks=nchunks)
            ridx, rvals = oracle_topk(x, k)
            assert np.array_equal(idx, ridx) and same(vals, rvals), (kind, k)


@pytest.mark.parametrize("bound", ["too_high", "too_low"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_fallback_when_the_sample_misjudges(monkeypatch, bound, dtype):
    # too high: fewer than k candidates; too low: the buffers overflow
    key = np.array(1e30 if bound == "too_high" else 1e-30, dtype).view(
        np.uint32 if dtype == np.float32 else np.uint64)[()]
    monkeypatch.setattr(cpu_select, "_estimate", lambda x, g, k: (key, 64))
    for nchunks in [1, 3]:
        x = vector("normal", 50000, dtype, seed=1)
        idx, vals = cpu_select.select_topk(x, 500, nchunks=nchunks)
        ridx, rvals = oracle_topk(x, 500)
        assert np.array_equal(idx, ridx) and same(vals, rvals)
        g, r = vector("normal", 50000, dtype, 2), vector("few", 50000, dtype, 3)
        r2 = r.copy()
        idx, vals = cpu_select.select_topk(r2, 500, g=g, nchunks=nchunks)
        ridx, rvals, rnew = oracle_ef(g, r, 500)
        assert np.array_equal(idx, ridx) and same(vals, rvals) and same(r2, rnew)


def test_topk_ties_go_to_lower_index_and_signed_zeros_tie():
    x = np.array([0.0, -0.0, 0.0, -0.0, 1.0, -1.0, 0.0], np.float32)
    for impl in ["numpy", "cpu"]:
        idx, vals = K.topk_abs(x, 4, impl=impl)
        assert idx.tolist() == [0, 1, 4, 5]
        assert same(vals, np.array([0.0, -0.0, 1.0, -1.0], np.float32))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(impl, bad):
    for dtype in DTYPES:
        x = vector("normal", 40001, dtype)
        x[12345] = bad
        (xi,) = to_impl(impl, x)
        name = impl_name(impl)
        for k in [0, 1, 400, 40001]:
            with pytest.raises(ValueError, match="NaN or Inf"):
                K.topk_abs(xi, k, impl=name)
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.threshold_select(xi, 1.0, impl=name)
        g, r = to_impl(impl, np.zeros_like(x), x.copy())
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.ef_select(g, r, 10, impl=name)


def test_strided_input_and_read_only_residual():
    x = vector("normal", 3001, np.float64)[::3]
    for impl in ["numpy", "cpu"]:
        idx, vals = K.topk_abs(x, 50, impl=impl)
        ridx, rvals = oracle_topk(x, 50)
        assert np.array_equal(idx, ridx) and same(vals, rvals)
    r = np.zeros(10)
    r.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        K.ef_select(np.ones(10), r, 2)
    with pytest.raises(ValueError, match="contiguous"):
        K.ef_select(np.ones(10), np.zeros(20)[::2], 2)


def test_k_and_argument_validation():
    x = np.zeros(5, np.float32)
    for k in [-1, 6]:
        with pytest.raises(ValueError, match="0 <= k <= n"):
            K.topk_abs(x, k)
    for k in [1.5, True, "2"]:
        with pytest.raises(TypeError, match="k must be an integer"):
            K.topk_abs(x, k)
    with pytest.raises(TypeError, match="dtype"):
        K.topk_abs(np.zeros(5, np.int32), 1)
    with pytest.raises(ValueError, match="1-D"):
        K.topk_abs(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="impl"):
        K.topk_abs(x, 1, impl="gpu")
    with pytest.raises(ValueError, match="same dtype"):
        K.ef_select(np.zeros(5), np.zeros(5, np.float32), 1)
    with pytest.raises(ValueError, match="NaN"):
        K.threshold_select(x, float("nan"))
    idx, vals = K.topk_abs(np.zeros(0, np.float64), 0)
    assert idx.size == 0 and vals.dtype == np.float64


# ---------------------------------------------------------------- threshold_select

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_threshold_select_matches_oracle(impl, dtype, kind):
    for n in [0, 1, 513, 5000]:
        x = vector(kind, n, dtype, seed=n + 1)
        (xi,) = to_impl(impl, x)
        for t in [-1.0, 0.0, 1e-30, 0.5, 1.0, 1.5, 4.0, 1e30]:
            idx, vals, count = K.threshold_select(xi, t, impl=impl_name(impl))
            ridx, rvals = oracle_threshold(x, t)
            assert count == ridx.size
            assert np.array_equal(host(idx), ridx) and same(host(vals), rvals), (n, t)


# ---------------------------------------------------------------- ef_select

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [0, 1, 513, 40001])
def test_ef_select_matches_oracle(impl, dtype, kind, n):
    g = vector(kind, n, dtype, seed=n)
    r = vector("normal", n, dtype, seed=n + 7) if kind != "equal" else np.zeros(n, dtype)
    for k in ks(n):
        gi, ri = to_impl(impl, g, r.copy())
        idx, vals = K.ef_select(gi, ri, k, impl=impl_name(impl))
        ridx, rvals, rnew = oracle_ef(g, r, k)
        assert np.array_equal(host(idx), ridx), (kind, n, k)
        assert same(host(vals), rvals) and same(host(ri), rnew), (kind, n, k)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_ef_select_without_zeroing(impl, dtype, kind):
    # zero=False: same selection, residual = grad + residual everywhere (also
    # on inputs whose sampled bound is misjudged and take the fallback pass)
    for n in [513, 40001]:
        g = vector(kind, n, dtype, seed=n + 1)
        r = vector("normal", n, dtype, seed=n + 9) if kind != "equal" else np.zeros(n, dtype)
        for k in [1, n // 100, n // 3]:
            gi, ri = to_impl(impl, g, r.copy())
            idx, vals = K.ef_select(gi, ri, k, zero=False, impl=impl_name(impl))
            ridx, rvals, rnew = oracle_ef(g, r, k, zero=False)
            assert np.array_equal(host(idx), ridx), (kind, n, k)
            assert same(host(vals), rvals) and same(host(ri), rnew), (kind, n, k)


def test_ef_select_repeated_steps_conserve_mass():
    # what error feedback promises: sent + residual == sum of the gradients
    rng = np.random.default_rng(5)
    res, sent, total = np.zeros(4096), np.zeros(4096), np.zeros(4096)
    for _ in range(10):
        g = rng.standard_normal(4096)
        total += g
        idx, vals = K.ef_select(g, res, 40)
        np.add.at(sent, idx, vals)
    np.testing.assert_allclose(sent + res, total, atol=1e-12)


# ---------------------------------------------------------------- scatter_add

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_duplicates_and_padding(impl, dtype):
    rng = np.random.default_rng(3)
    for n, m in [(1, 5), (10, 1000), (5000, 50000)]:
        idx = rng.integers(-1, n, m)                    # many repeats, some -1
        val = rng.integers(-8, 9, m).astype(dtype)      # exact sums: any order
        for itype in [np.int32, np.int64]:
            dst = rng.integers(-5, 5, n).astype(dtype)
            d, i, v = to_impl(impl, dst.copy(), idx.astype(itype), val)
            K.scatter_add(d, i, v, impl=impl_name(impl))
            assert same(host(d), oracle_scatter(dst, idx, val))


@pytest.mark.parametrize("nthreads_path", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_cpu_order_is_input_order(monkeypatch, nthreads_path, dtype):
    # random values: in-order summation must match np.add.at bit for bit,
    # for the serial kernel and for the range-parallel one
    if nthreads_path:
        monkeypatch.setattr(cpu_scatter.numba, "get_num_threads", lambda: 3)
        monkeypatch.setattr(cpu_scatter, "PARALLEL_MIN", 1)
    rng = np.random.default_rng(4)
    dst = rng.standard_normal(1000).astype(dtype)
    idx = rng.integers(-1, 1000, 40000)
    val = rng.standard_normal(40000).astype(dtype)
    a, b = dst.copy(), dst.copy()
    K.scatter_add(a, idx, val, impl="cpu")
    scatter.scatter_add_numpy(b, idx, val)
    assert same(a, b) and same(a, oracle_scatter(dst, idx, val))


@pytest.mark.parametrize("impl", IMPLS)
def test_scatter_add_rejects_bad_indices_untouched(impl):
    # on the device the check is a read-back: debug mode (kernels.set_checks)
    K.set_checks(True)
    try:
        for bad in [-2, 10, 2**31 - 1]:
            dst = np.zeros(10)
            d, i, v = to_impl(impl, dst, np.array([1, bad, 2]), np.ones(3))
            with pytest.raises(ValueError, match=r"idx\[1\]"):
                K.scatter_add(d, i, v, impl=impl_name(impl))
            assert not host(d).any()
    finally:
        K.set_checks(False)
    if impl == "cupy":                  # checks off: skipped, nothing written outside
        d, i, v = to_impl(impl, np.zeros(10), np.array([1, 10, 2, -2]), np.ones(4))
        K.scatter_add(d, i, v)
        assert host(d).tolist() == [0, 1, 1] + [0] * 7
    with pytest.raises(TypeError, match="dtype"):
        K.scatter_add(np.zeros(3), np.array([0]), np.ones(1, np.float32))


# ---------------------------------------------------------------- pack / unpack

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [0, 1, 3, 1000])
def test_pack_layout_and_round_trip_bit_exact(impl, dtype, k):
    rng = np.random.default_rng(k)
    idx = rng.integers(-1, 2**31 - 1, k).astype(np.int32)
    val = rng.standard_normal(k).astype(dtype)
    special = np.array([np.nan, -0.0, np.inf, -np.nan], dtype)[:k]
    val[:special.size] = special
    u = val.view(np.uint32 if dtype == np.float32 else np.uint64)
    if k:
        u[0] ^= 0x15                                    # a NaN with a payload
    expect = np.frombuffer(idx.tobytes() + val.tobytes(), np.uint8)
    i, v = to_impl(impl, idx, val)
    buf = K.pack(i, v, impl=impl_name(impl))
    assert buf.dtype == np.uint8 and buf.size == K.packed_nbytes(k, dtype)
    assert np.array_equal(host(buf), expect)
    ridx, rval = K.unpack(buf, k, dtype, impl=impl_name(impl))
    assert host(ridx).dtype == np.int32 and np.array_equal(host(ridx), idx)
    assert same(host(rval), val)


def test_pack_inputs_and_unpack_buffers():
    idx = np.arange(5, dtype=np.int64)
    val = np.linspace(0, 1, 5)
    for impl in ["numpy", "cpu"]:
        buf = K.pack(idx, val, impl=impl)
        # a bigger buffer (extra bytes ignored) and a typed view of it
        big = np.concatenate([buf, np.zeros(12, np.uint8)])
        for b in [big, big.view(np.uint32)]:
            i, v = K.unpack(b, 5, np.float64, impl=impl)
            assert np.array_equal(i, idx) and same(v, val)
        with pytest.raises(ValueError, match="need 60"):
            K.unpack(buf[:50], 5, np.float64, impl=impl)
    with pytest.raises(ValueError, match="int32"):
        K.pack(np.array([2**31]), np.ones(1))
    assert K.packed_nbytes(7, np.float32) == 56 and K.packed_nbytes(7, "float64") == 84


# ---------------------------------------------------------------- mix

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mix_matches_oracle(impl, dtype):
    rng = np.random.default_rng(6)
    for n in [0, 1, 1023, 4099]:
        x = (rng.standard_normal(n) * 1e3).astype(dtype)
        o = rng.standard_normal(n).astype(dtype)
        for w in [0.0, 1.0, 0.5, 1 / 3, 0.123456789]:
            xi, oi = to_impl(impl, x.copy(), o)
            K.mix(xi, oi, w, impl=impl_name(impl))
            assert same(host(xi), oracle_mix(x, o, w)), (n, w)


# ---------------------------------------------------------------- dispatch, import, cache

def test_dispatch_by_array_type():
    from mpidsgd.kernels import common as D
    assert D.choose(None, np.zeros(1)) == "cpu"
    assert D.choose("numpy", np.zeros(1)) == "numpy"

    class FakeDevice:
        __cuda_array_interface__ = {}
    assert D.choose(None, FakeDevice()) == "cuda"
    with pytest.raises(TypeError, match="host"):
        D.choose("cpu", FakeDevice())


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_import_is_cheap_and_lazy():
    out = _python("import sys, mpidsgd.kernels; "
                  "print('numba.cuda' in sys.modules, 'cupy' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_compiled_code_is_cached_on_disk():
    code = ("import numpy as np, mpidsgd.kernels as K\n"
            "from mpidsgd.kernels.cpu import select_kernels as S\n"
            "x = np.random.default_rng(0).standard_normal(40000).astype(np.float32)\n"
            "K.topk_abs(x, 100)\n"
            "print(sum(S.collect.stats.cache_hits.values()), "
            "sum(S.collect.stats.cache_misses.values()))\n")
    first = _python(code)
    assert first.returncode == 0, first.stderr
    second = _python(code)
    assert second.returncode == 0, second.stderr
    hits, misses = map(int, second.stdout.split())
    assert hits == 1 and misses == 0
