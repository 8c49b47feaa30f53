"""CUDA merge_sum / coalesce and the debug checks (kernels.set_checks), in
Numba's simulator, against the NumPy reference, bit for bit.

As in tests/kernels/test_kernels_cuda.py, the simulator must be on before
numba.cuda is first imported: the launcher test below reruns this file in a
fresh pytest with NUMBA_ENABLE_CUDASIM=1, where the other tests run. The
simulator runs one Python thread per GPU thread, so sizes stay small; the
merge is cut into chunks of 4 outputs there (kernels/cuda/merge.py), so a
few hundred entries already make many chunks, several blocks and a
grid-stride loop. Device-to-host copies are counted by wrapping the
simulator's copy_to_host: that is how "nothing is read back" is proved.
"""
import numpy as np
import pytest

from cudasim import SIM, prepare_simulator, run_in_simulator

in_sim = pytest.mark.skipif(not SIM, reason="runs in the simulator subprocess")
not_sim = pytest.mark.skipif(SIM, reason="runs in the main process")
DTYPES = [np.float32, np.float64]


@not_sim
def test_in_simulator():
    run_in_simulator(__file__, timeout=600)


def _sel(rng, n, k, dtype, pad=0):
    """An ascending selection of k of n indices, -1 padding in front, some -0.0."""
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int32)
    val = rng.standard_normal(k).astype(dtype)
    val[rng.random(k) < 0.1] = dtype(-0.0)
    return (np.concatenate((np.full(pad, -1, np.int32), idx)),
            np.concatenate((np.zeros(pad, dtype), val)))


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _gpu():
    if SIM:
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


gpu = pytest.mark.skipif(not _gpu(), reason="CuPy tests need a GPU")


@pytest.fixture
def copies(monkeypatch):
    """A list that gets one entry per device-to-host copy."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    seen = []
    orig = FakeCUDAArray.copy_to_host

    def counted(self, *args, **kwargs):
        seen.append(self.size)
        return orig(self, *args, **kwargs)
    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", counted)
    return seen


@pytest.fixture
def checks_on():
    import mpidsgd.kernels as K
    K.set_checks(True)
    yield
    K.set_checks(False)


if SIM:
    prepare_simulator()
    import mpidsgd.kernels as K
    from mpidsgd.kernels.spardl_merge import coalesce_numpy, merge_sum_numpy

    # (n, ka, kb, pad a, pad b): duplicates, empty sides, only padding, sizes
    # not a multiple of the chunk (4) or block (16), > 256 chunks (1,100 entries)
    PAIRS = [(1, 0, 0, 0, 0), (1, 1, 1, 0, 0), (5, 0, 3, 0, 0), (5, 3, 0, 2, 0), (9, 0, 0, 3, 2),
             (37, 30, 29, 1, 0), (200, 130, 71, 0, 3), (700, 600, 500, 2, 1)]

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("case", range(len(PAIRS)))
    def test_merge_sum_matches_reference(dtype, case):
        n, ka, kb, pa, pb = PAIRS[case]
        rng = np.random.default_rng(case)
        a, b = _sel(rng, n, ka, dtype, pa), _sel(rng, n, kb, dtype, pb)
        for first, second in [(a, b), (b, a)]:
            i, v = K.merge_sum(*first, *second, impl="cuda")
            ri, rv = merge_sum_numpy(*first, *second)
            assert i.tolist() == ri.tolist() and _bits_equal(v, rv), (n, ka, kb)

    @in_sim
    def test_merge_sum_int64_indices_and_value_dtype():
        ia = np.array([-1, 3, 2**33], np.int64)
        va = np.array([0.0, 1.5, 2.5], np.float32)
        ib = np.array([3, 7], np.int32)
        vb = np.array([0.25, 1.0], np.float64)      # cast to va's dtype, as on the CPU
        i, v = K.merge_sum(ia, va, ib, vb, impl="cuda")
        ci, cv = K.merge_sum(ia, va, ib, vb, impl="cpu")
        assert i.dtype == ci.dtype == np.int64 and i.tolist() == [3, 7, 2**33]
        assert _bits_equal(v, cv) and v.tolist() == [1.75, 1.0, 2.5]

    @in_sim
    def test_coalesce_adds_in_list_order():
        # float32: (1e8 + -1e8) + 1 = 1, but 1e8 + (-1e8 + 1) = 0; a lone -0.0 -> +0.0
        one = np.array([4], np.int32)
        sels = [(one, np.array([1e8], np.float32)), (one, np.array([-1e8], np.float32)),
                (np.array([-1, 4, 9], np.int32), np.array([0, 1, -0.0], np.float32))]
        i, v = K.coalesce(sels, impl="cuda")
        assert i.tolist() == [4, 9] and v.tolist() == [1.0, 0.0] and not np.signbit(v[1])
        i, v = K.coalesce(sels[1:] + sels[:1], impl="cuda")
        assert v[0] == 0.0                        # (-1e8 + 1) + 1e8

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("d", [1, 2, 3, 5])
    def test_coalesce_matches_cpu_and_reads_back_once(dtype, d, copies):
        rng = np.random.default_rng(d)
        sels = [_sel(rng, 150, int(rng.integers(0, 90)), dtype, pad=s % 3) for s in range(d)]
        i, v = K.coalesce(sels, impl="cuda")
        ri, rv = coalesce_numpy(sels)
        ci, cv = K.coalesce(sels, impl="cpu")
        assert i.tolist() == ri.tolist() == ci.tolist()
        assert _bits_equal(v, rv) and _bits_equal(v, cv)
        # the count (1 entry), then the two results: however many merges
        assert copies == [1, i.size, v.size]

    @in_sim
    def test_coalesce_of_empty_selections():
        e = (np.zeros(0, np.int32), np.zeros(0, np.float32))
        p = (np.full(3, -1, np.int32), np.zeros(3, np.float32))
        for sels in ([e], [e, e, e], [p], [e, p, e]):
            i, v = K.coalesce(sels, impl="cuda")
            assert i.size == 0 and v.size == 0 and v.dtype == np.float32

    # ------------------------------------------------------------ debug checks

    @in_sim
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_scatter_add_checks_off_reads_nothing_back(dtype, copies):
        assert not K.checks()                     # the default
        dst = np.arange(6, dtype=dtype)
        idx = np.array([1, 9, -1, 1, -4, 5, 6], np.int32)   # 9, -4, 6: out of range
        val = np.array([1, 2, 3, 4, 5, 6, 7], dtype)
        d = dst.copy()
        K.scatter_add(d, idx, val, impl="cuda")
        # out-of-range indices are skipped, never written; one copy: d itself
        assert d.tolist() == [0, 6, 2, 3, 4, 11]
        assert copies == [d.size]

    @in_sim
    def test_scatter_add_checks_on_raises_before_writing(copies, checks_on):
        d = np.zeros(6, np.float32)
        idx = np.array([1, 2, 9, -4], np.int32)
        with pytest.raises(ValueError, match=r"idx\[2\] = 9 is outside \[0, 6\)"):
            K.scatter_add(d, idx, np.ones(4, np.float32), impl="cuda")
        assert not d.any() and copies == [1]      # the validation's one read-back
        K.scatter_add(d, idx[:2], np.ones(2, np.float32), impl="cuda")
        assert d.tolist() == [0, 1, 1, 0, 0, 0] and copies == [1, 1, 6]

    @in_sim
    @pytest.mark.parametrize("on", [False, True])
    def test_pack_unpack_read_back_only_their_results(on, copies):
        K.set_checks(on)
        try:
            idx = np.array([3, -1, 0, 2**31 - 1, 7], np.int32)
            val = np.array([1.0, -0.0, np.nan, 2.0, -3.0], np.float32)
            buf = K.pack(idx, val, impl="cuda")
            i, v = K.unpack(buf, 5, np.float32, impl="cuda")
        finally:
            K.set_checks(False)
        assert buf.tobytes() == idx.tobytes() + val.tobytes()
        assert i.tolist() == idx.tolist() and _bits_equal(v, val)
        assert copies == [40, 5, 5]               # buf, then idx and val: nothing else

    @in_sim
    def test_coalesce_on_device_trusts_order_unless_checked():
        from mpidsgd.comm import spar_allgather as sag
        calls = []

        class Xp:                                 # a stand-in device module
            pass
        orig = sag._ascending
        sag._ascending = lambda idx: calls.append(idx.size) or orig(idx)
        try:
            sels = [(np.array([2, 5], np.int32), np.array([1.0, 2.0])),
                    (np.array([5, 8], np.int32), np.array([3.0, 4.0]))]
            i, v = sag.coalesce(sels, Xp)
            assert calls == [] and i.tolist() == [2, 5, 8] and v.tolist() == [1.0, 5.0, 4.0]
            K.set_checks(True)
            sag.coalesce(sels, Xp)
            assert calls == [2, 2]
        finally:
            K.set_checks(False)
            sag._ascending = orig


@not_sim
def test_set_checks_switch():
    import mpidsgd.kernels as K
    assert K.checks() is False
    K.set_checks(1)
    try:
        assert K.checks() is True
    finally:
        K.set_checks(False)
    assert K.checks() is False


@not_sim
def test_pack_int64_range_check_is_a_device_read_back_only_in_debug_mode():
    # a device array (stand-in: an object with the CUDA array interface)
    # of int64 indices: its range is read back only with checks on
    import mpidsgd.kernels as K
    from mpidsgd.kernels import packing
    reads = []

    class Dev:
        __cuda_array_interface__ = {}

        def __init__(self, a):
            self.a, self.dtype, self.size = a, a.dtype, a.size

        def min(self):
            reads.append("min")
            return self.a.min()

        def max(self):
            reads.append("max")
            return self.a.max()

        def astype(self, dtype):
            return self.a.astype(dtype)
    big = Dev(np.array([1, 2**31], np.int64))
    assert packing._as_int32(big).dtype == np.int32 and reads == []
    K.set_checks(True)
    try:
        with pytest.raises(ValueError, match="int32"):
            packing._as_int32(big)
    finally:
        K.set_checks(False)
    assert reads == ["min", "max"]


@not_sim
@pytest.mark.parametrize("on", [True, False])
def test_train_sets_checks_from_debug_check_kernels(on, tmp_path):
    import mpidsgd.kernels as K
    from mpidsgd import train
    from mpidsgd.topology import Topology
    args = train.parse_args(["--set", f"debug.check_kernels={str(on).lower()}",
                             "--set", f"run.out_dir=\"{tmp_path}\"", "--set", "data.n_samples=64",
                             "--set", "data.n_test=16", "--set", "data.n_features=4",
                             "--set", "model.hidden=[4]", "--set", "run.steps=1"])
    K.set_checks(not on)
    try:
        train.setup(args, Topology())
        assert K.checks() is on
    finally:
        K.set_checks(False)


@not_sim
def test_cut_on_the_device_path_needs_no_boolean_mask():
    # the device branch of spar_allgather.cut (complement: no count read
    # back), driven through a stand-in array module, against the host branch
    from mpidsgd.comm.spar_allgather import complement, cut

    class NotNumpy:                              # numpy, but not `np`
        def __getattr__(self, name):
            return getattr(np, name)
    rng = np.random.default_rng(5)
    for n in [1, 7, 300]:
        for k in sorted({0, 1, n // 3, n - 1, n}):
            pos = np.sort(rng.choice(n, k, replace=False))
            assert complement(pos, n, np).tolist() == np.setdiff1d(np.arange(n), pos).tolist()
            idx = np.sort(rng.choice(10 * n + 1, n, replace=False)).astype(np.int32)
            val = rng.standard_normal(n)
            got, ref = cut(idx, val, k, NotNumpy()), cut(idx, val, k, np)
            assert all(np.array_equal(a, b) for a, b in zip(got, ref)), (n, k)


# ---------------------------------------------------------------- on a GPU (.ci/gpu)

@pytest.fixture
def host_reads(monkeypatch):
    """A list that gets one entry per read-back of the CUDA kernels (Device.host)."""
    from mpidsgd.kernels.cuda import util
    seen = []
    orig = util.Device.host

    def counted(self, d):
        seen.append(int(d.size))
        return orig(self, d)
    monkeypatch.setattr(util.Device, "host", counted)
    return seen


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d", [(50, 1), (1000, 3), (300_000, 4)])   # > 4096 chunks of 32
def test_gpu_coalesce_matches_reference_one_read_back(dtype, n, d, host_reads):
    import cupy
    import mpidsgd.kernels as K
    from mpidsgd.kernels.spardl_merge import coalesce_numpy
    rng = np.random.default_rng(n + d)
    sels = [_sel(rng, n, int(rng.integers(0, n // 2)), dtype, pad=s % 3) for s in range(d)]
    i, v = K.coalesce([(cupy.asarray(a), cupy.asarray(b)) for a, b in sels])
    ri, rv = coalesce_numpy(sels)
    assert isinstance(i, cupy.ndarray) and host_reads == [1]
    assert cupy.asnumpy(i).tolist() == ri.tolist() and _bits_equal(cupy.asnumpy(v), rv)


@gpu
def test_gpu_scatter_add_reads_back_only_in_debug_mode(host_reads):
    import cupy
    import mpidsgd.kernels as K
    d = cupy.zeros(6, cupy.float32)
    idx = cupy.asarray(np.array([1, 9, -1, 1, -4, 5], np.int32))
    K.scatter_add(d, idx, cupy.ones(6, cupy.float32))
    assert host_reads == [] and cupy.asnumpy(d).tolist() == [0, 2, 0, 0, 0, 1]
    K.set_checks(True)
    try:
        with pytest.raises(ValueError, match=r"idx\[1\] = 9"):
            K.scatter_add(d, idx, cupy.ones(6, cupy.float32))
    finally:
        K.set_checks(False)
    assert host_reads == [1]
