"""Implementation choice and argument checks shared by every kernel.

Each public op keeps a registry {"numpy": f, "cpu": g, "cuda": h} and calls
`dispatch(registry, impl, *arrays)`. Without `impl` the array type decides:
an object with `__cuda_array_interface__` (CuPy) goes to "cuda", anything
else to "cpu". `impl="cuda"` also accepts NumPy arrays: they are copied to the
device and back, which is how the tests drive the CUDA kernels in the Numba
simulator (NUMBA_ENABLE_CUDASIM=1).

Nothing here imports numba.cuda or cupy: the CUDA modules are imported by the
"cuda" entries themselves, on first use.
"""
import numbers

import numpy as np

IMPLS = ("numpy", "cpu", "cuda")
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(a):
    """True for arrays in GPU memory: CuPy, or anything with the CUDA array
    interface that is not a NumPy array (the tests' fake device arrays)."""
    return hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray)


def choose(impl, *arrays):
    """Name of the implementation to run: `impl` if given, else by array type."""
    on_device = any(is_device_array(a) for a in arrays)
    if impl is None:
        return "cuda" if on_device else "cpu"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if on_device and impl != "cuda":
        raise TypeError(f"impl={impl!r} needs host (NumPy) arrays; got a device array")
    return impl


def dispatch(registry, impl, *arrays):
    """The function of `registry` that handles these arrays."""
    return registry[choose(impl, *arrays)]


# --- debug checks on the device ----------------------------------------------
# Validating a device array's contents (an index range, an ascending list)
# means reading a result back to the host: a synchronisation per call. Off by
# default; host (NumPy) inputs are always checked, which costs no round trip.

_CHECKS = {"on": False}


def set_checks(on):
    """Validate device inputs with a host read-back (True) or trust them
    (False, the default). `train` sets it from `debug.check_kernels`."""
    _CHECKS["on"] = bool(on)


def checks():
    """Whether device inputs are validated (see set_checks)."""
    return _CHECKS["on"]


# --- argument checks (one place, same messages for every implementation) ---

def check_vector(name, a, dtypes=FLOATS):
    """`a` must be a 1-D array of one of `dtypes`."""
    if not hasattr(a, "dtype") or not hasattr(a, "ndim"):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (a flat buffer), got shape {a.shape}")
    if np.dtype(a.dtype) not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {a.dtype}")


def check_same(name_a, a, name_b, b):
    """Two vectors of the same dtype and length."""
    if a.dtype != b.dtype or a.shape != b.shape:
        raise ValueError(f"{name_a} ({a.dtype}, {a.shape}) and {name_b} "
                         f"({b.dtype}, {b.shape}) must have the same dtype and shape")


def check_k(k, n):
    """0 <= k <= n, an integer; returns it as int."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must satisfy 0 <= k <= n = {n}, got k = {k}")
    return k


def packed_nbytes(k, dtype):
    """Size in bytes of a packed message of k (int32, dtype) pairs."""
    return int(k) * (4 + np.dtype(dtype).itemsize)


def index_dtype(n):
    """Indices into a vector of length n: int32 below 2**31 elements, else int64."""
    return np.dtype(np.int32) if n < 2**31 else np.dtype(np.int64)


def non_finite_error(name):
    return ValueError(f"{name} contains NaN or Inf: selection by magnitude is undefined")


# --- bit patterns: |x| as an order-preserving unsigned integer ---------------
# For IEEE floats, clearing the sign bit leaves an integer whose order is the
# order of |x| (+0 and -0 both map to 0); values >= the Inf pattern are Inf/NaN.

UINT = {np.dtype(np.float32): np.dtype(np.uint32), np.dtype(np.float64): np.dtype(np.uint64)}


def abs_mask(dtype):
    u = UINT[np.dtype(dtype)]
    return u.type((1 << (8 * u.itemsize - 1)) - 1)


def inf_key(dtype):
    dtype = np.dtype(dtype)
    return np.array(np.inf, dtype).view(UINT[dtype])[()]


def threshold_key(t, dtype):
    """Key k_t with |x| >= t  <=>  key(x) >= k_t; t is rounded to `dtype` first."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(t).__name__}")
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):
        tt = dtype.type(t)
    if np.isnan(tt):
        raise ValueError("threshold is NaN")
    if tt <= 0:                    # every |x| >= 0 >= t
        return UINT[dtype].type(0)
    return np.array(tt, dtype).view(UINT[dtype])[()]
