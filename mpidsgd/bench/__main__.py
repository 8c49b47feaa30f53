"""`python -m mpidsgd.bench ...` (cli.py has the subcommands)."""
import sys

from mpidsgd.threads import POOLS, one_thread_per_rank

# before NumPy/Numba create their thread pools; `bench kernels` is one
# process that measures 1..all Numba threads itself
one_thread_per_rank(POOLS[:-1] if sys.argv[1:2] == ["kernels"] else POOLS)

from .cli import main  # noqa: E402

sys.exit(main())
