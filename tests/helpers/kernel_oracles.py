"""What the kernel tests share: the implementations under test ("numpy",
"cpu", and "cupy" where a GPU is), independent oracles, adversarial inputs
and a bitwise comparison. The oracles are written differently from every
implementation (sort-based top-k, in-order Python loops over the
definitions), so a wrong tie rule or a dropped duplicate fails."""
import numpy as np
import pytest

DTYPES = [np.float32, np.float64]


def _gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu()
IMPLS = ["numpy", "cpu", pytest.param("cupy", marks=pytest.mark.skipif(
    not GPU, reason="CuPy tests need a GPU"))]


# ---------------------------------------------------------------- oracles

def oracle_topk(x, k):
    """Stable sort by -|x| (ties keep index order), first k, indices sorted."""
    order = np.argsort(-np.abs(x.astype(np.float64)), kind="stable")[:k]
    idx = np.sort(order)
    return idx, x[idx]


def oracle_threshold(x, t):
    tt = x.dtype.type(t)
    idx = np.array([i for i in range(x.size) if abs(x[i]) >= tt], dtype=np.int64)
    return idx, x[idx]


def oracle_ef(grad, residual, k, zero=True):
    acc = grad + residual
    idx, vals = oracle_topk(acc, k)
    new = acc.copy()
    if zero:
        new[idx] = 0
    return idx, vals, new


def oracle_scatter(dst, idx, val):
    """In-order Python loop, every update in dst's dtype."""
    out = dst.copy()
    for j, v in zip(idx.tolist(), val):
        if j != -1:
            out[j] = out[j] + v
    return out


def oracle_mix(x, other, w):
    w = x.dtype.type(w)
    return np.array([a + w * (b - a) for a, b in zip(x, other)], dtype=x.dtype)


def bits(a):
    """Bit patterns, so -0.0 != 0.0 and NaN payloads compare."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8)


def same(a, b):
    return a.shape == b.shape and np.array_equal(bits(a), bits(b))


# ---------------------------------------------------------------- inputs

def vector(kind, n, dtype, seed=0):
    """Random and adversarial inputs: ties, all equal, signed zeros, ..."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "equal":                       # every |x| ties
        x = np.full(n, 1.5)
        x[::3] = -1.5
    elif kind == "few":                         # 5 magnitudes, random signs
        x = rng.integers(0, 5, n) * rng.choice([-1.0, 1.0], n)
    elif kind == "zeros":                       # +0/-0 ties with a few values
        x = np.where(rng.random(n) < 0.5, 0.0, -0.0)
        x[rng.integers(0, max(n, 1), n // 10)] = rng.standard_normal(n // 10)
    elif kind == "adjacent":                    # neighbouring floats of one binade:
        # the radix select reaches its last digit (9 bits for float32, 8 for
        # float64, narrower than the others) with the prefix's low bits set
        ui = np.uint32 if dtype == np.float32 else np.uint64
        last = (8 * np.dtype(dtype).itemsize - 1) % 11
        keys = np.array(1.0, dtype).view(ui) + ui(3 << last) + rng.permutation(n).astype(ui)
        x = keys.view(dtype) * np.where(rng.random(n) < 0.5, -1, 1).astype(dtype)
    elif kind == "wide":                        # magnitudes over 600 binades
        x = rng.standard_normal(n) * 2.0 ** rng.integers(-300, 300, n)
        if dtype == np.float32:
            x = rng.standard_normal(n) * 2.0 ** rng.integers(-140, 120, n)
    else:
        raise ValueError(kind)
    return x.astype(dtype)


KINDS = ["normal", "equal", "few", "zeros", "wide", "adjacent"]


def ks(n):
    return sorted({0, min(1, n), n // 100, n // 3, max(n - 1, 0), n})


def to_impl(impl, *arrays):
    if impl == "cupy":
        import cupy
        return [cupy.asarray(a) for a in arrays]
    return list(arrays)


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def impl_name(impl):
    return "cuda" if impl == "cupy" else impl


# ---------------------------------------------------------------- restore_outside / densify_blocks

def oracle_restore(dst, idx, old, keep, inside=False):
    """dst with old[j] written back at idx[j] wherever (idx[j] in keep) == inside."""
    out = dst.copy()
    kept = set(keep.tolist())
    for j, v in zip(idx.tolist(), old):
        if (j in kept) == inside:
            out[j] = v
    return out


def oracle_densify(n, idx, val, c, divisor):
    """Row b of (idx, val) adds val / divisor at b * c + idx in a dense vector of
    n, in order; -1 (padding) and slots past n are skipped."""
    out = np.zeros(n, val.dtype)
    div = val.dtype.type(divisor)
    for b in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            i = int(idx[b, j])
            if i != -1 and b * c + i < n:
                out[b * c + i] = out[b * c + i] + val[b, j] / div
    return out
