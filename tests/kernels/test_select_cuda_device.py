"""The device-resident CUDA radix select (kernels/cuda/select*.py) in Numba's
simulator, against a stable-sort oracle and the NumPy reference.

As in test_kernels_cuda.py, the launcher test starts this file in a fresh
pytest with NUMBA_ENABLE_CUDASIM=1 (the simulator must be on before
numba.cuda is imported). The simulator runs one Python thread per GPU thread
(16 per block, tiles of 128 keys): sizes stay tiny. `single_max` lowers the
switch to the multi-block path so that it runs at these sizes too.
"""
import numpy as np
import pytest

from cudasim import SIM, prepare_simulator, run_in_simulator

in_sim = pytest.mark.skipif(not SIM, reason="runs in the simulator subprocess")
DTYPES = [np.float32, np.float64]


@pytest.mark.skipif(SIM, reason="this is the simulator process")
def test_device_select_in_simulator():
    run_in_simulator(__file__, timeout=600)


if SIM:
    prepare_simulator()


# ---------------------------------------------------------------- oracles, inputs

def oracle_topk(x, k):
    """Stable sort by -|x| (ties keep index order), first k, indices sorted."""
    idx = np.sort(np.argsort(-np.abs(x.astype(np.float64)), kind="stable")[:k])
    return idx, x[idx]


def oracle_ef(g, r, k, zero):
    acc = g + r
    idx, vals = oracle_topk(acc, k)
    new = acc.copy()
    if zero:
        new[idx] = 0
    return idx, vals, new


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def same(a, b):
    return a.shape == b.shape and np.array_equal(bits(a), bits(b))


def vector(kind, n, dtype, seed=0):
    """normal; ties (three magnitudes, many equal at the threshold); zeros
    (+0/-0 ties); adjacent floats of one binade: every radix digit down to
    the last, narrower one (9 bits float32, 8 bits float64) is needed."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "ties":
        x = rng.integers(1, 4, n) * rng.choice([-1.0, 1.0], n)
    elif kind == "zeros":
        x = np.where(rng.random(n) < 0.5, 0.0, -0.0)
        x[rng.integers(0, max(n, 1), n // 10)] = rng.standard_normal(n // 10)
    elif kind == "adjacent":
        ui = np.uint32 if dtype == np.float32 else np.uint64
        keys = np.array(1.0, dtype).view(ui) + ui(5) + rng.permutation(n).astype(ui)
        return keys.view(dtype) * np.where(rng.random(n) < 0.5, -1, 1).astype(dtype)
    else:
        raise ValueError(kind)
    return x.astype(dtype)


@pytest.fixture(params=["single", "multi"])
def path(request, monkeypatch):
    """Run on the single-block path (default switch) or force the multi-block
    one; afterwards, check that the calls took that path (in "multi", segments
    of up to 64 keys still go to the single-block path)."""
    from mpidsgd.kernels.cuda import select
    if request.param == "multi":
        monkeypatch.setattr(select, "SINGLE_MAX", 64)
        # 10 blocks in all: the five segments of a batched call get 2 each
        monkeypatch.setattr(select, "MAX_BLOCKS", 10)
    ran = {"_small": 0, "_large": 0}
    for name in ran:
        def spy(*a, _f=getattr(select, name), _n=name, **kw):
            ran[_n] += 1
            return _f(*a, **kw)
        monkeypatch.setattr(select, name, spy)
    yield request.param
    if request.param == "multi":
        assert ran["_large"] > 0
    else:
        assert ran["_large"] == 0 and ran["_small"] > 0


if SIM:
    import mpidsgd.kernels as K
    from mpidsgd.kernels.topk import topk_abs_numpy

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "adjacent"])
    def test_topk_abs(path, dtype, kind):
        # n not a multiple of 16 (threads) or 128 (a tile); k = 0 and k = n
        for n, k in [(1, 1), (129, 0), (129, 1), (129, 43), (129, 129), (300, 100)]:
            x = vector(kind, n, dtype, seed=n)
            idx, vals = K.topk_abs(x, k, impl="cuda")
            ridx, rvals = oracle_topk(x, k)
            assert idx.dtype == np.int32 and np.array_equal(idx, ridx), (n, k)
            assert same(vals, rvals)
            nidx, nvals = topk_abs_numpy(x, k)
            assert np.array_equal(idx, nidx) and same(vals, nvals)

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_threshold_select(path, dtype):
        x = vector("ties", 300, dtype, seed=2)
        x[::7] *= dtype(1.25)
        for t in [0.0, 2.0, 2.5, 1e30]:             # 2.0: ties at the threshold
            idx, vals, count = K.threshold_select(x, t, impl="cuda")
            ridx = np.flatnonzero(np.abs(x) >= dtype(t))
            assert count == ridx.size and np.array_equal(idx, ridx) and same(vals, x[ridx])

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("kind", ["normal", "ties"])
    def test_ef_select(path, dtype, kind):
        n = 130
        g = vector(kind, n, dtype, seed=3)
        r = vector("normal", n, dtype, seed=4) if kind == "normal" else np.zeros(n, dtype)
        for k, zero in [(0, True), (1, False), (40, True), (40, False), (n, True)]:
            r2 = r.copy()
            idx, vals = K.ef_select(g, r2, k, zero=zero, impl="cuda")
            ridx, rvals, rnew = oracle_ef(g, r, k, zero)
            assert np.array_equal(idx, ridx) and same(vals, rvals) and same(r2, rnew)

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_blocks_in_one_launch(path, dtype):
        # 5 blocks (rows), one of them all ties, one of adjacent floats
        nb, m = 5, 130
        x = np.concatenate([vector("normal", m, dtype, 5), vector("ties", m, dtype, 6),
                            vector("adjacent", m, dtype, 7), vector("zeros", m, dtype, 8),
                            vector("normal", m, dtype, 9)])
        for k in [0, 43, m]:
            idx, vals = K.topk_abs_blocks(x, nb, k, impl="cuda")
            cidx, cvals = K.topk_abs_blocks(x, nb, k, impl="numpy")
            assert idx.shape == (nb, k) and np.array_equal(idx, cidx) and same(vals, cvals)
            for b in range(nb):
                ridx, rvals = oracle_topk(x[b * m:(b + 1) * m], k)
                assert np.array_equal(idx[b], ridx) and same(vals[b], rvals)
        r = vector("normal", nb * m, dtype, 10)
        for k in [0, 43]:
            r1, r2 = r.copy(), r.copy()
            idx, vals = K.ef_select_blocks(x, r1, nb, k, impl="cuda")
            ridx, rvals = K.ef_select_blocks(x, r2, nb, k, impl="numpy")
            assert np.array_equal(idx, ridx) and same(vals, rvals) and same(r1, r2)

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_raises(path, dtype, bad):
        x = vector("normal", 150, dtype)
        x[140] = -bad
        for k in [0, 5]:
            with pytest.raises(ValueError, match="NaN or Inf"):
                K.topk_abs(x, k, impl="cuda")
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.threshold_select(x, 1.0, impl="cuda")
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.topk_abs_blocks(x, 3, 2, impl="cuda")      # only the last block is bad
        # error feedback: the residual holds grad + residual, nothing zeroed
        r = vector("normal", 150, dtype, seed=1)
        r2 = r.copy()
        with pytest.raises(ValueError, match="NaN or Inf"):
            K.ef_select(x, r2, 10, impl="cuda")
        assert same(r2, x + r)

    @in_sim
    def test_one_read_back_per_call(path, monkeypatch):
        """The digit walk stays on the device: one status read-back per call,
        whatever the number of digits (float64 adjacent floats need all six);
        the other device-to-host copies are the results (NumPy in, NumPy out)."""
        from mpidsgd.kernels.cuda import select, util
        count = {"read_back": 0, "host": 0}
        real_read, real_host = select._read_back, util.Device.host

        def read_back(dev, d):
            count["read_back"] += 1
            return real_read(dev, d)

        def host(self, d):
            count["host"] += 1
            return real_host(self, d)
        monkeypatch.setattr(select, "_read_back", read_back)
        monkeypatch.setattr(util.Device, "host", host)
        x = vector("adjacent", 300, np.float64, seed=1)
        r = np.zeros_like(x)
        calls = [lambda: K.topk_abs(x, 100, impl="cuda"), lambda: K.topk_abs(x, 0, impl="cuda"),
                 lambda: K.threshold_select(x, 1.0, impl="cuda"),
                 lambda: K.ef_select(x, r, 100, impl="cuda"),
                 lambda: K.topk_abs_blocks(x, 3, 20, impl="cuda"),
                 lambda: K.ef_select_blocks(x, r, 2, 20, impl="cuda")]
        for call in calls:
            count.update(read_back=0, host=0)
            out = call()
            assert count["read_back"] == 1
            assert count["host"] == 1 + 2      # the status, then idx and vals
            assert len(out) in (2, 3)
