"""The configuration reference, generated from the code: `python -m mpidsgd.config`.

The default column is what a `python -m mpidsgd.train` run gets when nothing
sets the key: the quickstart's value where it has one (defaults.py), else the
dataclass default. `--write docs/configuration.md` rewrites the docs page's tables.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields

from .config import SECTIONS, toml_value
from .defaults import default_of


def reference() -> list:
    """(key, default, meaning) rows of every common key, for --help and docs/configuration.md."""
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
    return "`" + (toml_value(v) if v != "" else '""') + "`"


def _md_text(text):
    """A table cell: a '|' in a meaning would split the row."""
    return text.replace("|", "\\|")


def markdown() -> str:
    """The configuration reference as Markdown tables (docs/configuration.md)."""
    out = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in reference():
        out.append(f"| `{key}` | {_md_value(default)} | {_md_text(meaning)} |")
    rows = algorithm_reference()
    out += ["", "Algorithm-specific keys (same flat `[algo]` table; an algorithm rejects "
            "the keys it does not know):", "",
            "| key | algorithms | default | meaning |", "|---|---|---|---|"]
    for key, default, meaning, names in sorted(rows, key=lambda r: (r[0], r[3])):
        out.append(f"| `{key}` | {', '.join(names)} | {_md_value(default)} | {_md_text(meaning)} |")
    return "\n".join(out)


def main(argv=None):
    """`python -m mpidsgd.config [--write FILE | --check FILE]`: print the
    reference, rewrite the tables between the markers of FILE (the docs page
    docs/configuration.md), or exit 1 if FILE's tables are stale."""
    import argparse
    import re
    import sys
    ap = argparse.ArgumentParser(prog="python -m mpidsgd.config", description=main.__doc__)
    ap.add_argument("--write", "--readme", dest="write", metavar="FILE",
                    help="rewrite the tables between <!-- config:table --> markers of FILE")
    ap.add_argument("--check", metavar="FILE",
                    help="exit 1 if the tables between FILE's markers differ from the code")
    args = ap.parse_args(argv)
    text = markdown()
    path = args.write or args.check
    if not path:
        print(text)
        return 0
    src = open(path).read()
    # the block between the markers is replaced whole, so the page cannot drift
    pattern = r"(<!-- config:table -->\n).*?(<!-- /config:table -->)"
    new, n = re.subn(pattern, lambda m: m.group(1) + text + "\n" + m.group(2), src, flags=re.S)
    if n != 1:
        raise SystemExit(f"{path}: no <!-- config:table --> block")
    if args.check:
        if new != src:
            print(f"{path}: configuration tables are stale; run "
                  f"python -m mpidsgd.config --write {path}", file=sys.stderr)
            return 1
        return 0
    with open(path, "w") as fh:
        fh.write(new)
    return 0
