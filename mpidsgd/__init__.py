"""mpidsgd: MPI-native communication-efficient data-parallel SGD."""

__version__ = "0.1.0"
