"""Numba CUDA (@cuda.jit) implementations of the kernels in the package above.

Imported only on the first CUDA call, since importing numba.cuda is slow and
needs either a GPU or the simulator (NUMBA_ENABLE_CUDASIM=1). Each module
takes arrays that the public op has already checked.
"""
