"""Benchmarks and report scripts: `python -m mpidsgd.bench <command>`.

Speed measurements (kernels, collectives, train, torch), predictions beyond
this machine (costmodel), and reports over their outputs (vr-rates,
async-iters). Every subcommand is one module here exposing
`register(subparsers)`; cli.py collects them. Two drivers run as their own
MPI programs: `python -m mpidsgd.bench.ps_server` (parameter-server load)
and `python -m mpidsgd.bench.torch_worker` (one cell of `bench torch`).

Importing this package changes nothing in the process; `python -m
mpidsgd.bench` sizes the thread pools first (__main__.py).
"""
from .cli import main  # noqa: F401
