"""The one set of defaults a user sees: the built-in quickstart.

Every `python -m mpidsgd.train` run starts from QUICKSTART (spelt out in
jobs/quickstart.toml), then the --config file, then the --set overrides; a
key set by none of them takes the dataclass default of config.py. The README
table, --print-config and --help therefore show the same values.
"""
from __future__ import annotations

from . import config as C

QUICKSTART = {
    "run": {"seed": 0, "epochs": 6.0, "eval_every": 500, "out_dir": "runs/quickstart"},
    "data": {"name": "synthetic", "n_samples": 65536, "n_test": 8192, "n_features": 64,
             "n_classes": 10, "batch_size": 32},
    "model": {"name": "mlp", "hidden": [256, 256]},
    "algo": {"name": "spardl", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
}


def default_of(section: str, key: str, fallback):
    """The value a run gets for `section.key` when nothing sets it."""
    return QUICKSTART.get(section, {}).get(key, fallback)


def _user_tables(path, overrides) -> dict:
    """What the user wrote: the --config file merged with --set (no defaults)."""
    tables = C.load_tables(path) if path else {}
    return C.merge(tables, C.parse_set(overrides))


def load_cli(path=None, overrides=(), world_size=None):
    """(Config, notes) of a command-line run: QUICKSTART < file < --set.

    Algorithms that apply their own update (the variance-reduction family)
    refuse momentum; when the momentum only came from the quickstart, it is
    set to 0 and a one-line note says so; a momentum the user wrote is still
    refused by the algorithm's own check.
    """
    from .algorithms import REGISTRY
    from .catalog import config_from_dict
    user = _user_tables(path, overrides)
    base = {sec: dict(tbl) for sec, tbl in QUICKSTART.items()}
    name = user.get("algo", {}).get("name", base["algo"]["name"])
    notes = []
    cls = REGISTRY.get(name) if isinstance(name, str) else None
    if getattr(cls, "refuses_momentum", False) and "momentum" not in user.get("algo", {}):
        base["algo"]["momentum"] = 0.0
        notes.append(f"note: {name} applies its own update, so the quickstart's "
                     f"algo.momentum = {QUICKSTART['algo']['momentum']} is set to 0")
    return config_from_dict(C.merge(base, user), world_size), notes
