"""Is the MPI library under mpi4py CUDA-aware (can it read device buffers)?

`comm.cuda_aware = true` hands device buffers to MPI directly; a library
without CUDA support would read them as host memory and crash or send
garbage. This asks the library, in one place, for train and the benchmark:

- the library's own answer, `MPIX_Query_cuda_support()` (MPICH >= 4, Open
  MPI, and their derivatives export it; 1 = device buffers work now), found
  through ctypes in the library mpi4py is linked to;
- for MPICH, GPU support is also switched off at run time by the
  environment variable MPIR_CVAR_ENABLE_GPU=0 (it then answers 0 too);
- a library without the query cannot tell: None, the caller decides.
"""
from __future__ import annotations

import ctypes
import os


def _query_symbol():
    """MPIX_Query_cuda_support of the MPI library mpi4py uses, or None."""
    from mpi4py import MPI
    try:
        # dlsym on mpi4py's extension also searches the libraries it links
        lib = ctypes.CDLL(MPI.__file__)
        fn = lib.MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


def library_name() -> str:
    """First line of MPI_Get_library_version, e.g. 'MPICH Version: 5.0.2'."""
    from mpi4py import MPI
    text = MPI.Get_library_version().strip()
    return " ".join(text.splitlines()[0].split()) if text else "unknown MPI"


def cuda_support(find=_query_symbol, env=None) -> tuple:
    """(supported, why): supported is True, False, or None (cannot tell);
    why is a short phrase naming the library and the evidence. `find`
    (returns the query function or None) and `env` replace the library
    lookup and os.environ (tests)."""
    env = os.environ if env is None else env
    name = library_name()
    if "MPICH" in name and env.get("MPIR_CVAR_ENABLE_GPU", "").strip().lower() in ("0", "no", "false"):
        return False, f"{name}, MPIR_CVAR_ENABLE_GPU={env['MPIR_CVAR_ENABLE_GPU']}"
    fn = find()
    if fn is None:
        return None, f"{name} has no MPIX_Query_cuda_support"
    answer = int(fn())
    return answer == 1, f"{name}, MPIX_Query_cuda_support() = {answer}"


def refusal(why) -> str:
    """The one-line error for comm.cuda_aware = true on a library without support."""
    return (f"comm.cuda_aware = true but this MPI is not CUDA-aware ({why}); "
            f"set comm.cuda_aware = false to stage device buffers through pinned host memory")
