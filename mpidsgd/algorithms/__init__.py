"""Training algorithms, one per module; each registers itself by name.

Every module in this package is imported on first use, so adding an algorithm
is adding a file: nothing here lists them.
"""
import importlib
import pkgutil

from .base import REGISTRY, Algorithm, StepInfo, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["REGISTRY", "Algorithm", "StepInfo", "register"]
