"""Hand-written kernels (NumPy reference, Numba CPU, Numba CUDA); imported as mpidsgd.kernels."""
