"""Serial reference implementations the MPI collectives are checked against."""
