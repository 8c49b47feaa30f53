"""Numba CPU (@njit) implementations of the kernels in the package above.

Each module here takes NumPy arrays that the public op has already checked
and holds no argument checks of its own; compiled code is cached on disk.
"""
