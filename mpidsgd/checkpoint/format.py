"""The checkpoint file: its HDF5 layout, reading it back, verify and info.

One file per checkpoint, `<checkpoint.dir>/ckpt-<step>.h5`:

    attributes   format, format_version, mpidsgd_version, config (resolved TOML),
                 algorithm, synchronous, world_size, step, epoch, model,
                 param_count, dtype, layout (every view of the parameters), created
    /shared/<k>              algorithm state identical on every rank (written once)
    /ranks/<r>/algo/<k>      the algorithm's per-rank state

A nested state dict is a group: {"opt": {"momentum_buf": v}} in the shared
state is the dataset /shared/opt/momentum_buf (flatten / unflatten below).
    /ranks/<r>/data/<k>      the shard's position in the data order
    /ranks/<r>/comm/<phase>  [bytes, messages] sent so far (byte counts continue)
    /ranks/<r>/train/<k>     the running loss average and elapsed time

Every dataset is at least 1-D and carries a fletcher32 checksum; its `kind`
attribute says how to give the value back (array, int, float, bool, str,
none, or a NumPy scalar of the stored dtype). No pickle: a file holds numbers
and text only and cannot execute code when read.

Rank 0 writes the file (manager.py): `.ckpt-<step>.h5.tmp` in the same
folder, fsynced and `os.replace`d into place, so a crash never damages an
older checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from ..errors import CheckpointError
from .schema import stored_problem

__all__ = ["encode", "decode", "pack", "unpack", "verify", "info", "list_checkpoints",
           "read_group", "read_value"]

FORMAT = "mpidsgd-checkpoint"
FORMAT_VERSION = 2       # 2: optimizer state nested (migrate.py reads version 1)
NAME = re.compile(r"^ckpt-(\d+)\.h5$")


# -- values <-> 1-D arrays ----------------------------------------------------------
def encode(value, asnumpy=np.asarray):
    """(array of >= 1 dimension, kind, original shape) for any state value."""
    if value is None:
        return np.zeros(1, np.uint8), "none", (1,)
    if isinstance(value, bool):
        return np.array([bool(value)]), "bool", (1,)
    if isinstance(value, int):
        if not -2**63 <= value < 2**63:
            raise ValueError(f"integer {value} does not fit int64; store it as an array")
        return np.array([value], np.int64), "int", (1,)
    if isinstance(value, float):
        return np.array([value], np.float64), "float", (1,)
    if isinstance(value, str):
        return np.frombuffer(value.encode(), np.uint8).copy(), "str", (len(value.encode()),)
    if isinstance(value, np.generic):
        return np.array([value]), "npscalar", (1,)
    arr = np.asarray(asnumpy(value))
    if arr.dtype == object:
        raise TypeError("object arrays cannot be checkpointed")
    shape = arr.shape      # kept apart: ascontiguousarray makes 0-d arrays 1-d
    return np.ascontiguousarray(arr).reshape(-1) if arr.ndim == 0 else np.ascontiguousarray(arr), \
        "array", shape


def decode(arr: np.ndarray, kind: str, shape=None):
    """The value `encode` was given, as a NumPy array or Python/NumPy scalar."""
    if kind == "none":
        return None
    if kind == "bool":
        return bool(arr.reshape(-1)[0])
    if kind == "int":
        return int(arr.reshape(-1)[0])
    if kind == "float":
        return float(arr.reshape(-1)[0])
    if kind == "str":
        return bytes(np.asarray(arr, np.uint8)).decode(errors="replace")
    if kind == "npscalar":
        return arr.reshape(-1)[0]
    if kind == "array":
        return arr.reshape(tuple(shape)) if shape is not None else arr
    raise CheckpointError(f"unknown value kind {kind!r}")


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts -> {"a/b": value}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: dict) -> dict:
    """{"a/b": v} -> {"a": {"b": v}} (the inverse of flatten)."""
    out = {}
    for key, v in flat.items():
        node, parts = out, key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def sub(flat: dict, prefix: str) -> dict:
    """Entries under `prefix/`, prefix removed (one level of nesting kept flat)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in flat.items() if k.startswith(prefix + "/")}


# -- packing a flat dict into one byte buffer (for the transfer) ---------------------
def pack(flat: dict, asnumpy=np.asarray):
    """(header bytes, payload uint8 array): a JSON manifest plus raw bytes."""
    entries, parts, off = [], [], 0
    for key, value in flat.items():
        arr, kind, shape = encode(value, asnumpy)
        raw = arr.view(np.uint8).reshape(-1) if arr.size else np.zeros(0, np.uint8)
        entries.append([key, kind, arr.dtype.str, list(shape), off, int(raw.size)])
        parts.append(raw)
        off += raw.size
    payload = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return json.dumps(entries).encode(), payload


def unpack_arrays(header: bytes, payload: np.ndarray):
    """[(key, array, kind, shape)] from `pack`'s output."""
    out = []
    for key, kind, dt, shape, off, n in json.loads(header.decode()):
        arr = payload[off:off + n].view(np.dtype(dt)).copy()
        out.append((key, arr, kind, shape))
    return out


def unpack(header: bytes, payload: np.ndarray) -> dict:
    return {k: decode(a, kind, shape) for k, a, kind, shape in unpack_arrays(header, payload)}


# -- HDF5 ------------------------------------------------------------------------------
def write_array(group, key, arr, kind, shape):
    ds = group.create_dataset(key, data=arr, fletcher32=True)
    ds.attrs["kind"] = kind
    if kind == "array" and tuple(shape) != arr.shape:
        ds.attrs["shape"] = np.asarray(shape, np.int64)
    return ds


def stored_form(ds):
    """(kind, shape) of a dataset, or a CheckpointError naming it when its
    dtype cannot hold what its `kind` attribute says (metadata only)."""
    kind = _attr(ds.attrs.get("kind", "array"))
    shape = ds.attrs["shape"] if "shape" in ds.attrs else None
    why = stored_problem(ds.dtype, kind, shape, ds.size or 0)
    if why:
        raise CheckpointError(f"{ds.name} {why}")
    return kind, None if shape is None else tuple(int(s) for s in np.asarray(shape).reshape(-1))


def read_value(ds):
    """Read a dataset (its checksum is verified by the read) and decode it."""
    kind, shape = stored_form(ds)
    return decode(np.asarray(ds[()]), kind, shape)


def read_group(group) -> dict:
    """Every dataset below `group` as a flat {"a/b": value} dict."""
    out = {}

    def visit(name, obj):
        if hasattr(obj, "dtype"):
            out[name] = read_value(obj)
    group.visititems(visit)
    return out


def step_of(path: str) -> int | None:
    m = NAME.match(os.path.basename(path))
    return int(m.group(1)) if m else None


def list_checkpoints(folder: str) -> list:
    """Checkpoint paths in `folder`, newest (highest step) first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(step_of(n), os.path.join(folder, n)) for n in names if step_of(n) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def verify(path: str):
    """(attrs, datasets, problems): every dataset read back through its checksum.

    datasets: [(name, dtype, shape, kind, ok)]; problems: human-readable lines
    (empty when the file is a valid checkpoint).
    """
    import h5py
    attrs, datasets, problems = {}, [], []
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                problems.append("not an mpidsgd checkpoint (no format attribute)")
            elif int(attrs.get("format_version", 0)) > FORMAT_VERSION:
                problems.append(f"format version {attrs['format_version']} is newer than "
                                f"this mpidsgd reads ({FORMAT_VERSION})")

            def visit(name, obj):
                if not hasattr(obj, "dtype"):
                    return
                ok = True
                try:
                    stored_form(obj)
                    obj[()]
                    if not obj.fletcher32:
                        ok = False
                        problems.append(f"/{name}: no checksum")
                except CheckpointError as exc:
                    ok = False
                    problems.append(str(exc))
                except Exception as exc:  # h5py raises OSError for a checksum failure
                    ok = False
                    problems.append(f"/{name}: {str(exc).splitlines()[0]}")
                kind = _attr(obj.attrs.get("kind", "array"))
                datasets.append((name, obj.dtype, obj.shape, kind, ok))
            f.visititems(visit)
            if "shared" not in f or "ranks" not in f:
                problems.append("missing /shared or /ranks")
            elif len(f["ranks"]) != int(attrs.get("world_size", -1)):
                problems.append(f"/ranks has {len(f['ranks'])} ranks, world_size says "
                                f"{attrs.get('world_size')}")
    except Exception as exc:
        problems.append(f"cannot read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return attrs, datasets, problems


def fsync_path(path: str, directory: bool = False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- `python -m mpidsgd.checkpoint info FILE` --------------------------------------------
def info(path: str, out=None) -> int:
    """Print layout, attributes and checksum verdict; 0 valid, 1 damaged, 2 unreadable."""
    out = out or sys.stdout
    if not os.path.isfile(path):
        print(f"mpidsgd: error: checkpoint {path} does not exist", file=sys.stderr)
        return 2
    attrs, datasets, problems = verify(path)
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"file: {path} ({os.path.getsize(path)} bytes)")
    p("attributes:")
    for k in sorted(attrs):
        if k != "config":
            p(f"  {k} = {attrs[k]}")
    old = attrs.get("format_version")
    if isinstance(old, int) and old < FORMAT_VERSION:
        p(f"note: format version {old}, listed as stored; a resume reads it as version "
          f"{FORMAT_VERSION} (optimizer state nested under opt/, inner/, outer/)")
    p("layout:")
    for name, dt, shape, kind, ok in sorted(datasets):
        p(f"  /{name:<40} {str(dt):>8} {str(shape):>14}  {kind:<8} "
          f"{'checksum ok' if ok else 'CHECKSUM FAILED'}")
    if "config" in attrs:
        p("config:")
        for line in str(attrs["config"]).splitlines():
            p(f"  {line}")
    if problems:
        p(f"verdict: DAMAGED ({len(problems)} problem(s))")
        for line in problems:
            p(f"  {line}")
        return 1 if datasets else 2
    p(f"verdict: valid, all {len(datasets)} dataset checksums verify")
    return 0
