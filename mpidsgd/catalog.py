"""The plug-in catalog: what the registries offer, handed to config.

config.py knows the sections and their rules but imports no registry (an
algorithm imports config for its Options, so the other way round would be
a loop). This entry-layer module builds the Catalog config needs and runs
the one algorithm hook:

    cfg = load_config(path, overrides, world_size=P)   # sections, then the hook

The hook is the algorithm's `Options.validate(cfg, world_size)`, called once
on every rank before anything is built (train.setup), so a refusal is the
same line and exit code 2 everywhere. `world_size=None` (a tool that only
reads a config) skips the rules that need the world size.
"""
from __future__ import annotations

from . import config as C


def catalog() -> C.Catalog:
    """The registered algorithms' Options classes and the model names."""
    from .algorithms import REGISTRY
    from .models import NAMES
    return C.Catalog(options={name: cls.Options for name, cls in REGISTRY.items()},
                     auto_momentum=frozenset(n for n, cls in REGISTRY.items()
                                             if getattr(cls, "auto_momentum", False)),
                     models=tuple(NAMES))


def validate(cfg: C.Config, world_size: int | None = None) -> C.Config:
    """The algorithm's own rules: its Options.validate(cfg, world_size)."""
    opts = cfg.algo.options
    if opts is not None:
        opts.validate(cfg, world_size)
    return cfg


def config_from_dict(tables: dict, world_size: int | None = None) -> C.Config:
    """C.from_dict with the registered plug-ins, then the algorithm's rules."""
    return validate(C.from_dict(tables, catalog()), world_size)


def load_config(path=None, overrides=(), base: dict | None = None,
                world_size: int | None = None) -> C.Config:
    """C.load with the registered plug-ins, then the algorithm's rules."""
    return validate(C.load(path, overrides, base, catalog=catalog()), world_size)
