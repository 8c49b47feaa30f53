"""Data configs for the serial data tests: a Config with data.* set, and
load_data on a COMM_SELF channel with the task the entry point would pick."""
from mpi4py import MPI

from mpidsgd.backend import Backend
from mpidsgd.comm.channel import Channel
from mpidsgd.config import Config
from mpidsgd.data import load_data
from mpidsgd.startup import resolve_task


def make_cfg(**data):
    cfg = Config()
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def load(cfg):
    """load_data with the task the entry point would decide (startup.py)."""
    return load_data(cfg, Channel(MPI.COMM_SELF), Backend("cpu"), resolve_task(cfg)[0])
