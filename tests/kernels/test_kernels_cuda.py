"""The Numba CUDA kernels on the CPU: Numba's simulator, NumPy arrays, impl="cuda".

The simulator has to be switched on before numba.cuda is first imported, so
the test run by the normal suite, `test_cuda_kernels_in_simulator`, starts
this same file in a fresh `python -m pytest` with NUMBA_ENABLE_CUDASIM=1; in
that process the kernel tests below run (and the launcher is skipped). The
simulator runs every GPU thread as a Python thread: sizes stay small, but
cover several blocks and tiles and sizes that are not multiples of either.
On a machine with a GPU the same kernels also run for real, through CuPy
arrays, in test_kernels.py.
"""
import numpy as np
import pytest

from cudasim import SIM, prepare_simulator, run_in_simulator

in_sim = pytest.mark.skipif(not SIM, reason="runs in the simulator subprocess "
                            "(test_cuda_kernels_in_simulator)")


@pytest.mark.skipif(SIM, reason="this is the simulator process")
def test_cuda_kernels_in_simulator():
    run_in_simulator(__file__, timeout=900)



if SIM:
    prepare_simulator()

    import mpidsgd.kernels as K
    from kernel_oracles import (DTYPES, oracle_ef, oracle_mix, oracle_scatter,
                              oracle_threshold, oracle_topk, same, vector)

    def test_simulator_is_on():
        from numba import cuda
        from mpidsgd.kernels.cuda import util
        assert util.SIM
        assert type(cuda.to_device(np.zeros(1))).__name__ == "FakeCUDAArray"

    SIZES = [0, 1, 100, 129, 300]          # tile = 128 elements in the simulator

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind", ["normal", "equal", "few", "zeros", "wide", "adjacent"])
    def test_topk_abs(dtype, kind):
        for n in SIZES:
            x = vector(kind, n, dtype, seed=n)
            for k in sorted({0, min(1, n), n // 3, n}):
                idx, vals = K.topk_abs(x, k, impl="cuda")
                ridx, rvals = oracle_topk(x, k)
                assert idx.dtype == np.int32
                assert np.array_equal(idx, ridx) and same(vals, rvals), (n, k)

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_topk_abs_rejects_non_finite(dtype):
        x = vector("normal", 150, dtype)
        x[140] = np.nan
        for k in [0, 5]:
            with pytest.raises(ValueError, match="NaN or Inf"):
                K.topk_abs(x, k, impl="cuda")
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.threshold_select(x, 1.0, impl="cuda")

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_threshold_select(dtype):
        for kind in ["normal", "few", "zeros"]:
            x = vector(kind, 300, dtype, seed=2)
            for t in [0.0, 0.5, 1.0, 1e30]:
                idx, vals, count = K.threshold_select(x, t, impl="cuda")
                ridx, rvals = oracle_threshold(x, t)
                assert count == ridx.size and np.array_equal(idx, ridx) and same(vals, rvals)

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind", ["normal", "equal", "few", "adjacent"])
    def test_ef_select(dtype, kind):
        for n in [1, 129, 300]:
            g = vector(kind, n, dtype, seed=n)
            r = vector("normal", n, dtype, seed=n + 1) if kind != "equal" else np.zeros(n, dtype)
            for k in sorted({0, 1, n // 4, n}):
                for zero in (True, False):
                    r2 = r.copy()
                    idx, vals = K.ef_select(g, r2, k, zero=zero, impl="cuda")
                    ridx, rvals, rnew = oracle_ef(g, r, k, zero=zero)
                    assert np.array_equal(idx, ridx) and same(vals, rvals) and same(r2, rnew)

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_scatter_add(dtype):
        rng = np.random.default_rng(0)
        for n, m in [(1, 3), (7, 300)]:
            dst = rng.integers(-3, 3, n).astype(dtype)
            idx = rng.integers(-1, n, m)
            val = rng.integers(-4, 5, m).astype(dtype)   # exact: atomics in any order
            d = dst.copy()
            K.scatter_add(d, idx.astype(np.int32), val, impl="cuda")
            assert same(d, oracle_scatter(dst, idx, val))
        # bad indices: an error in debug mode (a read-back), else skipped
        d = np.zeros(4, dtype)
        K.set_checks(True)
        try:
            with pytest.raises(ValueError, match=r"idx\[2\]"):
                K.scatter_add(d, np.array([0, 1, 4, -3]), np.ones(4, dtype), impl="cuda")
        finally:
            K.set_checks(False)
        assert not d.any()
        K.scatter_add(d, np.array([0, 1, 4, -3]), np.ones(4, dtype), impl="cuda")
        assert d.tolist() == [1, 1, 0, 0]

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_pack_unpack(dtype):
        idx = np.array([5, -1, 2**31 - 1, 0], np.int32)
        val = np.array([np.nan, -0.0, -np.inf, 1.25], dtype)
        val.view(np.uint32 if dtype == np.float32 else np.uint64)[0] ^= 0x15
        buf = K.pack(idx, val, impl="cuda")
        assert np.array_equal(buf, np.frombuffer(idx.tobytes() + val.tobytes(), np.uint8))
        i, v = K.unpack(buf, 4, dtype, impl="cuda")
        assert np.array_equal(i, idx) and same(v, val)
        i, v = K.unpack(np.zeros(0, np.uint8), 0, dtype, impl="cuda")
        assert i.size == 0 and v.size == 0

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_restore_outside(dtype):
        from kernel_oracles import oracle_restore
        rng = np.random.default_rng(2)
        dst = rng.standard_normal(300).astype(dtype)
        idx = rng.choice(300, 130, replace=False).astype(np.int32)    # any order
        old = rng.standard_normal(130).astype(dtype)
        keep = np.union1d(idx[:40], rng.choice(300, 20, replace=False)).astype(np.int32)
        for inside in (False, True):
            d = dst.copy()
            K.restore_outside(d, idx, old, keep, inside=inside, impl="cuda")
            assert same(d, oracle_restore(dst, idx, old, keep, inside))

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_densify_blocks(dtype):
        from kernel_oracles import oracle_densify
        rng = np.random.default_rng(3)
        idx = np.stack([np.sort(rng.choice(70, 20, replace=False)) for _ in range(3)])
        idx[1, 15:] = -1
        idx = idx.astype(np.int32)
        val = rng.standard_normal((3, 20)).astype(dtype)
        val[:, ::5] = dtype(-0.0)
        out = rng.standard_normal(190).astype(dtype)
        K.densify_blocks(out, idx, val, 70, 3, impl="cuda")
        assert same(out, oracle_densify(190, idx, val, 70, 3))

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_mix(dtype):
        rng = np.random.default_rng(1)
        x = (rng.standard_normal(130) * 100).astype(dtype)
        o = rng.standard_normal(130).astype(dtype)
        for w in [0.0, 0.3, 1.0]:
            y = x.copy()
            K.mix(y, o, w, impl="cuda")
            assert same(y, oracle_mix(x, o, w))
