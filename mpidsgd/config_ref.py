"""The configuration reference, generated from the code: `python -m mpidsgd.config`.

The default column is what a `python -m mpidsgd.train` run gets when nothing
sets the key: the quickstart's value where it has one (defaults.py), else the
dataclass default. `--readme README.md` rewrites the README's tables.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields

from .config import SECTIONS, _toml_value
from .defaults import default_of


def reference() -> list:
    """(key, default, meaning) rows of every common key, for --help and the README."""
    rows = []

    def walk(cls, prefix):
        for f in fields(cls):
            if f.metadata.get("skip"):
                continue
            hint = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}.{f.name}")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            # a run takes the quickstart's value where it sets one
            section, _, key = f"{prefix}.{f.name}".rpartition(".")
            rows.append((f"{prefix}.{f.name}", default_of(section, key, default),
                         f.metadata.get("doc", "")))
    for sec, cls in SECTIONS.items():
        walk(cls, sec)
    return rows


def algorithm_reference() -> list:
    """(key, default, meaning, algorithms) rows of the algorithm-specific keys
    under [algo]: one row per (key, default, meaning), listing every
    registered algorithm that declares it that way."""
    from .algorithms import REGISTRY
    merged = {}
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        opt = getattr(cls, "Options", None)
        if opt is not None:
            for f in fields(opt):
                if f.metadata.get("skip"):
                    continue
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                key = (f"algo.{f.name}", repr(default), f.metadata.get("doc", ""))
                merged.setdefault(key, (default, []))[1].append(name)
    return [(k, default, doc_, names) for (k, _, doc_), (default, names) in merged.items()]


def _md_value(v):
    return "`" + (_toml_value(v) if v != "" else '""') + "`"


def _md_text(text):
    """A table cell: a '|' in a meaning would split the row."""
    return text.replace("|", "\\|")


def markdown() -> str:
    """The configuration reference as Markdown tables (README section)."""
    from .algorithms import REGISTRY
    out = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in reference():
        out.append(f"| `{key}` | {_md_value(default)} | {_md_text(meaning)} |")
    rows = algorithm_reference()
    out += ["", "Algorithm-specific keys (same flat `[algo]` table; an algorithm rejects "
            "the keys it does not know):", "",
            "| key | algorithms | default | meaning |", "|---|---|---|---|"]
    for key, default, meaning, names in sorted(rows, key=lambda r: (r[0], r[3])):
        out.append(f"| `{key}` | {', '.join(names)} | {_md_value(default)} | {_md_text(meaning)} |")
    changed = [(n, REGISTRY[n].defaults) for n in sorted(REGISTRY) if getattr(REGISTRY[n], "defaults", None)]
    if changed:
        out += ["", "Common defaults an algorithm changes: " + "; ".join(
            f"`{n}`: " + ", ".join(f"`algo.{k} = {_toml_value(v)}`" for k, v in d.items())
            for n, d in changed) + "."]
    return "\n".join(out)


def main(argv=None):
    """`python -m mpidsgd.config [--readme README.md]`: print the reference,
    or rewrite the README's config tables between their markers."""
    import argparse
    import re
    ap = argparse.ArgumentParser(prog="python -m mpidsgd.config", description=main.__doc__)
    ap.add_argument("--readme", help="rewrite the tables between <!-- config:table --> markers")
    args = ap.parse_args(argv)
    text = markdown()
    if not args.readme:
        print(text)
        return 0
    src = open(args.readme).read()
    new, n = re.subn(r"(<!-- config:table -->\n).*?(<!-- /config:table -->)",
                     lambda m: m.group(1) + text + "\n" + m.group(2), src, flags=re.S)
    if n != 1:
        raise SystemExit(f"{args.readme}: no <!-- config:table --> block")
    with open(args.readme, "w") as fh:
        fh.write(new)
    return 0
