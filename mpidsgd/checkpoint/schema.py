"""What a checkpoint may hold: the one place where every attribute and state
value read from a file is checked before anything is loaded.

A `Rule` says what one value must be: its kind (int, float, bool, str, none,
a NumPy scalar or an array), dtype and shape, and its range (finite, at least
`lo`, below `hi`, equal to a value of this run). The rules come from the live
run: `template(value)` makes the rule of a state value from the value the run
holds now, so a checkpoint must look like the state it replaces; the range
rules below add what a kind cannot say (a step count is a non-negative integer
below 2^53, where float64 counts stay exact; a position lies inside its epoch).
`check(values, rules, where)` raises one CheckpointError naming the first bad
field, so every problem is one line.

The stored form of a dataset (its `kind` attribute against its dtype) is
checked from HDF5 metadata alone (`stored_problem`), before values are read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

import numpy as np

from ..errors import CheckpointError

COUNT_MAX = 2 ** 53      # counts stay below this: float64 represents them exactly
ANY = object()           # Rule.equal: no required value
KINDS = ("none", "bool", "int", "float", "str", "npscalar", "array")
# state values that count things: non-negative wherever they appear
COUNTS = {"step", "samples", "epoch", "pos", "loss_n", "syncs", "pushes", "skipped", "merged",
          "mixing_steps", "adam_t", "sag_h", "pending", "synced", "h"}


@dataclass
class Rule:
    """What one value read from a checkpoint must be."""

    kind: str                   # one of KINDS
    dtype: object = None        # npscalar/array: the exact dtype
    shape: tuple | None = None  # array: the exact shape
    lo: float | None = None     # every element >= lo
    hi: float | None = None     # every element < hi
    equal: object = ANY         # the exact value this run has
    integral: bool = False      # floats that hold whole counts (comm messages)


def kind_of(value) -> str:
    """The kind `encode` would store `value` as."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, np.generic):
        return "npscalar"
    return "array"


def template(value, key: str = "", asnumpy=np.asarray) -> Rule:
    """The rule for a state value: the kind, dtype and shape of the live
    value, integers bounded (non-negative for counts), floats finite."""
    kind = kind_of(value)
    count = key.rsplit("/", 1)[-1] in COUNTS
    lo = 0 if count else -COUNT_MAX
    if kind == "int":
        return Rule(kind, lo=lo, hi=COUNT_MAX)
    if kind == "float":
        return Rule(kind, lo=0 if count else None)
    if kind in ("none", "bool", "str"):
        return Rule(kind)
    if hasattr(value, "dtype") and hasattr(value, "shape"):   # device arrays: no copy
        dtype, shape = np.dtype(value.dtype), tuple(value.shape)
    else:
        arr = np.asarray(asnumpy(value))
        dtype, shape = arr.dtype, arr.shape
    ints = dtype.kind in "iu"
    return Rule(kind, dtype=dtype, shape=shape if kind == "array" else None,
                lo=lo if ints else None, hi=COUNT_MAX if ints else None)


def _num(value, integral=False) -> str:
    return f"{value:.0f}" if integral else f"{value:g}"


def problem(value, rule: Rule) -> str | None:
    """Why `value` breaks `rule` (None when it does not)."""
    kind = kind_of(value)
    if kind != rule.kind and not (rule.kind == "float" and kind == "int"):
        article = "an" if kind[0] in "aeiou" else "a"
        return f"is {article} {kind} ({_show(value)}), expected {rule.kind}"
    if kind in ("npscalar", "array"):
        dt = np.asarray(value).dtype
        if dt != np.dtype(rule.dtype):
            return f"has dtype {dt}, expected {np.dtype(rule.dtype)}"
        if rule.shape is not None and tuple(np.shape(value)) != tuple(rule.shape):
            return f"has shape {tuple(np.shape(value))}, expected {tuple(rule.shape)}"
    if rule.equal is not ANY and not _same(value, rule.equal):
        return f"is {_show(value)}, this run has {_show(rule.equal)}"
    if kind in ("int", "float", "npscalar", "array"):
        return _range_problem(np.asarray(value), rule)
    return None


def _range_problem(arr, rule) -> str | None:
    """Finite (floats), integral where asked, inside [lo, hi)."""
    if arr.size == 0 or arr.dtype.kind not in "biuf":
        return None if arr.dtype.kind in "biuf" else f"has dtype {arr.dtype}, expected numbers"
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            return "is not finite" if arr.ndim == 0 else "holds non-finite values"
        if rule.integral and not (arr == np.floor(arr)).all():
            return "is not a whole number"
    if rule.lo is not None and (arr < rule.lo).any():
        return f"is {_num(arr.min(), arr.dtype.kind != 'f')}, must be >= {_num(rule.lo, True)}"
    if rule.hi is not None and (arr >= rule.hi).any():
        bound = "2^53" if rule.hi == COUNT_MAX else _num(rule.hi, True)
        return f"is {_num(arr.max(), arr.dtype.kind != 'f')}, must be < {bound}"
    return None


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and bool(np.array_equal(a, b))
    return a == b


def _show(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape}"
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(values: dict, rules: dict, where: str, prefix: str = "", exact_keys=True):
    """Raise CheckpointError naming the first value of `values` that breaks
    its rule, or the keys that are missing / not expected (`exact_keys`)."""
    missing = sorted(set(rules) - set(values))
    extra = sorted(set(values) - set(rules)) if exact_keys else []
    if missing or extra:
        label = prefix.rstrip("/ ") or "state"
        raise CheckpointError(f"{where}: {label}: missing {missing}, unexpected {extra} "
                              f"(different algorithm options or version?)")
    for key in rules:
        why = problem(values[key], rules[key])
        if why:
            raise CheckpointError(f"{where}: {prefix}{key} {why}")


# -- the stored form of one dataset (metadata only) -----------------------------------
def stored_problem(dtype, kind, shape_attr, size) -> str | None:
    """Why a dataset's stored form cannot be decoded as its `kind` says."""
    if not isinstance(kind, str) or kind not in KINDS:
        return f"has an unknown kind {_show(kind)}"
    dt = np.dtype(dtype)
    ok = {"none": "biuf", "bool": "b", "int": "iu", "float": "f", "str": "u",
          "npscalar": "biuf", "array": "biuf"}[kind]
    if dt.kind not in ok or (kind == "str" and dt != np.uint8) or dt.fields is not None:
        return f"is stored as {dt}, which cannot hold a{'n' if kind[0] in 'aei' else ''} {kind}"
    if kind not in ("array", "str") and size != 1:
        return f"holds {size} values, a{'n' if kind[0] in 'aei' else ''} {kind} is one"
    if shape_attr is not None:
        try:
            shape = tuple(int(s) for s in np.asarray(shape_attr).reshape(-1))
        except (TypeError, ValueError):
            return "has a shape attribute that is not a list of integers"
        if kind != "array" or any(s < 0 for s in shape) or math.prod(shape) != size:
            return f"has a shape attribute {shape} that does not fit its {size} values"
    return None


# -- the attributes and the model --------------------------------------------------------
def attribute_rules(cfg, algo, fmt_version: int) -> dict:
    """Rules for the file attributes (format and identity are checked by verify)."""
    model = algo.model
    return {"format_version": Rule("int", lo=1, hi=fmt_version + 1),
            "mpidsgd_version": Rule("str"), "config": Rule("str"), "created": Rule("str"),
            "algorithm": Rule("str"), "synchronous": Rule("bool", equal=bool(algo.synchronous)),
            "world_size": Rule("int", lo=1, hi=2 ** 31), "step": Rule("int", lo=0, hi=COUNT_MAX),
            "epoch": Rule("float", lo=0, hi=COUNT_MAX), "model": Rule("str", equal=model.name),
            "param_count": Rule("int", lo=0, hi=COUNT_MAX),
            "dtype": Rule("str", equal=cfg.run.dtype)}


def layout_of(model) -> list:
    """[[name, [shape...]], ...]: every view of the flat parameter buffer."""
    return [[name, list(shape)] for name, shape, _ in model.layout.entries]


def check_model(where: str, attrs: dict, cfg, model):
    """The checkpoint's model is this run's: the whole [model] section of its
    config, then (files that record it) the name and shape of every view."""
    import sys
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        saved = tomllib.loads(attrs["config"]).get("model", {})
    except (tomllib.TOMLDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: attribute config is not valid TOML ({exc})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: attribute config has no [model] table")
    live, defaults = _section(cfg.model), _section(type(cfg.model)())
    for key in sorted(set(saved) | set(live)):
        mine = live.get(key, defaults.get(key, ANY))
        theirs = saved.get(key, defaults.get(key, ANY))
        if mine != theirs:
            raise CheckpointError(
                f"{where} was written for another model: model.{key} = {_show(theirs)} in the "
                f"checkpoint, {_show(mine)} in this run")
    if "layout" in attrs:
        try:
            saved_layout = json.loads(attrs["layout"])
        except (TypeError, ValueError):
            raise CheckpointError(f"{where}: attribute layout is not valid JSON") from None
        if saved_layout != layout_of(model):
            raise CheckpointError(
                f"{where} was written for another model layout: {_layout_text(saved_layout)} "
                f"in the checkpoint, {_layout_text(layout_of(model))} in this run")


def _section(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if not f.metadata.get("skip")}


def _layout_text(layout) -> str:
    try:
        text = " ".join(f"{n}{tuple(s)}" for n, s in layout)
    except (TypeError, ValueError):
        text = repr(layout)
    return text if len(text) <= 120 else text[:117] + "..."


# -- per-rank state ---------------------------------------------------------------------
def local_rules(live: dict, shard, asnumpy=np.asarray) -> dict:
    """Rules for /ranks/<r>: the live per-rank state as template; the data
    layout must be this shard's, and the position must lie inside its epoch."""
    rules = {k: template(v, k, asnumpy) for k, v in live.items() if not k.startswith("comm/")}
    for key in ("n", "batch_size", "steps_per_epoch", "seed", "rank"):
        if f"data/{key}" in rules:
            rules[f"data/{key}"].equal = getattr(shard, key)
    if "data/pos" in rules:
        rules["data/pos"].hi = shard.steps_per_epoch
    for key in ("train/loss_acc", "train/elapsed_s"):
        if key in rules:
            seconds = key.endswith("_s")
            rules[key] = Rule("float", lo=0 if seconds else None, hi=COUNT_MAX if seconds else None)
    return rules


COUNTER = Rule("array", dtype=np.float64, shape=(2,), lo=0, hi=COUNT_MAX)   # bytes may be modelled
MESSAGES = Rule("float", lo=0, hi=COUNT_MAX, integral=True)


def check_local(where: str, local: dict, rules: dict, rank: int, step: int):
    """Rank `rank`'s state: its fields, its byte counters, its loss count."""
    state = {k: v for k, v in local.items() if not k.startswith("comm/")}
    check(state, rules, where, f"/ranks/{rank}/")
    for key, value in local.items():
        if key.startswith("comm/"):
            why = problem(value, COUNTER) or problem(float(value[1]), MESSAGES)
            if why:
                raise CheckpointError(f"{where}: /ranks/{rank}/{key} {why} "
                                      f"(expected [bytes, messages] sent)")
    n = local.get("train/loss_n")
    if n is not None and n > step:
        raise CheckpointError(f"{where}: /ranks/{rank}/train/loss_n is {n}, more than the "
                              f"{step} steps taken")


def data0_rules() -> dict:
    """Rank 0's data position, read for a resume at another world size."""
    count = Rule("npscalar", dtype=np.int64, lo=0, hi=COUNT_MAX)
    return {"epoch": count, "pos": count,
            "steps_per_epoch": Rule("npscalar", dtype=np.int64, lo=1, hi=COUNT_MAX)}
