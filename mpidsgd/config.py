"""Typed run configuration: TOML file + `--set section.key=value` overrides.

Every section is a dataclass whose fields carry their default and a one-line
meaning (the `doc` metadata, also used to print the reference). Validation
lives here, in one place; an invalid value raises ConfigError naming the key.
Algorithm-specific keys live in the algorithm's own `Options` dataclass
(algorithms/<name>.py), whose `validate(cfg, world_size)` holds the
algorithm's rules; this module imports no registry: the entry layer
(catalog.py) hands it a Catalog of the registered Options classes and model
names, so adding an algorithm never touches this file.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import fields

from .errors import ConfigError  # noqa: F401  (defined in errors.py; modules import it from here)

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from .config_sections import (SECTIONS, AlgoConfig, Catalog, CheckpointConfig,  # noqa: F401
                              CommConfig, Config, ConfigError, DataConfig, DebugConfig,
                              EmulateConfig, ModelConfig, RunConfig, _check, _clip, doc)


# -- building from TOML tables ---------------------------------------------------
def _coerce(key, value, ftype, meta):
    """Check a TOML value against a field's type; ints are accepted as floats."""
    if ftype is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_clip(value)}")
        return value
    if ftype is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_clip(value)}")
        return value
    if ftype is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {_clip(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {_clip(value)}")
        return float(value)
    if ftype is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_clip(value)}")
        return value
    if ftype is list:
        item = meta.get("item", int)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(f"{key}[{i}]", v, item, {}) for i, v in enumerate(value)]
    if ftype is object:  # free-form (e.g. "auto" or a number)
        return value
    raise ConfigError(f"{key}: unsupported type {ftype}")


def fill(cls, table: dict, prefix: str):
    """Build dataclass `cls` from a TOML table, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("skip")}
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}.{key}"
        if key not in known:
            raise ConfigError(f"unknown config key {full}")
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} must be a table")
            kwargs[key] = fill(ftype, value, full)
        else:
            kwargs[key] = _coerce(full, value, ftype, known[key].metadata)
    return cls(**kwargs)


def from_dict(tables: dict, catalog: Catalog) -> Config:
    """Build a Config from nested dicts (parsed TOML) and check the common
    sections; `catalog` (mpidsgd/catalog.py) names the plug-ins."""
    unknown = set(tables) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section [{sorted(unknown)[0]}]")
    algo_table = dict(tables.get("algo", {}))
    name = algo_table.get("name", AlgoConfig.name)
    if not isinstance(name, str) or name not in catalog.options:
        raise ConfigError(f"algo.name: unknown algorithm {_clip(name)}; one of {sorted(catalog.options)}")
    opt_cls = catalog.options[name]
    common = {f.name for f in fields(AlgoConfig)}
    opt_table = {k: algo_table.pop(k) for k in list(algo_table) if k not in common}
    if "options" in algo_table:
        raise ConfigError("unknown config key algo.options")
    sections = {}
    for sec, cls in SECTIONS.items():
        sections[sec] = fill(cls, algo_table if sec == "algo" else tables.get(sec, {}), sec)
    if opt_cls is None:
        if opt_table:
            raise ConfigError(f"unknown config key algo.{sorted(opt_table)[0]} (algorithm {name!r} has no such option)")
        sections["algo"].options = None
    else:
        sections["algo"].options = fill(opt_cls, opt_table, "algo")
    return Config(**sections).validate(catalog)


def parse_set(items) -> dict:
    """`section.key=value` strings -> nested dict; values are TOML literals
    (a bare word that is not valid TOML is taken as a string)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set {_clip(item)} must look like section.key=value")
        path, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        keys = path.strip().split(".")
        if len(keys) < 2:
            raise ConfigError(f"--set {_clip(item)} must name section.key")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_tables(path) -> dict:
    """The parsed TOML file `path`; ConfigError when missing or malformed."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {_clip(str(exc), 120)[1:-1]}") from None


def load(path=None, overrides=(), base: dict | None = None, *, catalog: Catalog) -> Config:
    """Config from `base`, then an optional TOML file, then `--set` overrides;
    the common sections checked (the algorithm's rules: catalog.validate)."""
    tables = dict(base or {})
    if path:
        tables = merge(tables, load_tables(path))
    return from_dict(merge(tables, parse_set(overrides)), catalog)


# -- writing the resolved config ---------------------------------------------------
def to_dict(cfg: Config) -> dict:
    """Nested dict of every key, defaults included (options merged into algo)."""
    def conv(obj):
        out = {}
        for f in fields(obj):
            if f.metadata.get("skip"):
                continue
            v = getattr(obj, f.name)
            out[f.name] = conv(v) if dataclasses.is_dataclass(v) else v
        return out
    d = {sec: conv(getattr(cfg, sec)) for sec in SECTIONS}
    if cfg.algo.options is not None:
        d["algo"].update(conv(cfg.algo.options))
    return d


def toml_value(v):
    """`v` (bool, number, str or list) written as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps(cfg_or_dict) -> str:
    """TOML text of a Config (or nested dict); loads back to the same Config."""
    d = to_dict(cfg_or_dict) if isinstance(cfg_or_dict, Config) else cfg_or_dict
    lines = []

    def table(name, tbl):
        scalars = {k: v for k, v in tbl.items() if not isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in tbl.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)
    for sec, tbl in d.items():
        table(sec, tbl)
    return "\n".join(lines)


if __name__ == "__main__":
    # `python -m mpidsgd.config`: the reference lives in config_ref.py
    import sys
    from mpidsgd.config_ref import main
    sys.exit(main())
