"""The source layout rules, checked on the syntax trees of mpidsgd/ and
kernels/ (installed as mpidsgd.kernels); nothing is imported.

- no module uses another package's private (`_underscore`) names: not by
  `from x import _name`, not as `module._name`, and not as `obj._attr`
  where `_attr` is a private name that only another package defines;
- no import loop between modules (imports a module runs when it is
  imported: function bodies, which import late on purpose, do not count);
- every file stays under 350 lines.

Packages are mpidsgd's top-level modules, and each of mpidsgd.algorithms,
.comm, .data, .models, .checkpoint, .bench, .kernels, .kernels.cpu,
.kernels.cuda: a module may use the private names of its own package.
"""
import ast
import os

import pytest



def repo_root():
    """The folder holding mpidsgd/ and kernels/ (this file may sit in a tests/ sub-folder)."""
    path = os.path.dirname(os.path.abspath(__file__))
    while not all(os.path.isdir(os.path.join(path, d)) for d in ("mpidsgd", "kernels")):
        if os.path.dirname(path) == path:
            raise FileNotFoundError("no mpidsgd/ and kernels/ above tests/test_layering.py")
        path = os.path.dirname(path)
    return path


ROOT = repo_root()
TREES = {"mpidsgd": os.path.join(ROOT, "mpidsgd"), "mpidsgd.kernels": os.path.join(ROOT, "kernels")}
MAX_LINES = 350


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def modules(trees=None) -> dict:
    """{dotted module name: (path, is_package)} for every .py file."""
    out = {}
    for dotted, top in (trees or TREES).items():
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = os.path.relpath(folder, top)
            base = dotted if rel == "." else dotted + "." + rel.replace(os.sep, ".")
            for f in sorted(files):
                if f.endswith(".py"):
                    init = f == "__init__.py"
                    out[base if init else f"{base}.{f[:-3]}"] = (os.path.join(folder, f), init)
    return out


def package_of(name: str, mods: dict) -> str:
    return name if mods.get(name, ("", False))[1] else name.rpartition(".")[0]


def resolve(node: ast.ImportFrom, name: str, mods: dict) -> str:
    """The absolute module a `from ... import` names."""
    if not node.level:
        return node.module or ""
    pkg = package_of(name, mods).split(".")
    base = pkg[:len(pkg) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def runtime_nodes(tree):
    """The nodes that run at import time (function bodies, `if __name__ ==
    "__main__":` and `if TYPE_CHECKING:` blocks excluded)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and any(w in ast.dump(node.test)
                                            for w in ("TYPE_CHECKING", "'__main__'")):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


class Source:
    """The parsed tree of every module, and who defines which private names."""

    def __init__(self, trees=None):
        self.mods = modules(trees)
        self.trees, self.lines = {}, {}
        for name, (path, _) in self.mods.items():
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            self.trees[name] = ast.parse(text, path)
            self.lines[name] = text.count("\n") + (not text.endswith("\n") and bool(text))
        self.owners = {}      # private attribute name -> packages whose classes define it
        for name, tree in self.trees.items():
            for defined in self.attributes(tree):
                if private(defined):
                    self.owners.setdefault(defined, set()).add(package_of(name, self.mods))

    @staticmethod
    def attributes(tree):
        """Names a class gives its instances: methods and class-level names,
        and `self._x = ...` anywhere (module-level names are reached through
        the module, which foreign_attr follows by its alias)."""
        for n in ast.walk(tree):
            if isinstance(n, ast.ClassDef):
                for item in n.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        yield item.name
                    for t in getattr(item, "targets", [getattr(item, "target", None)]):
                        if isinstance(t, ast.Name):
                            yield t.id
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) \
                    and isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"):
                yield n.attr

    def where(self, name, node):
        return f"{os.path.relpath(self.mods[name][0], ROOT)}:{node.lineno}"

    def foreign_private(self) -> list:
        """Every use of another package's private name."""
        bad = []
        for name, tree in self.trees.items():
            mine, aliases = package_of(name, self.mods), {}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    src = resolve(node, name, self.mods)
                    for a in node.names:
                        sub = f"{src}.{a.name}"
                        if sub in self.mods:
                            aliases[a.asname or a.name] = sub
                        target = sub if sub in self.mods else src
                        if private(a.name) and src in self.mods \
                                and package_of(target, self.mods) != mine:
                            bad.append(f"{self.where(name, node)}: from {src} import {a.name}")
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name in self.mods and a.asname:
                            aliases[a.asname] = a.name
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and private(node.attr):
                    why = self.foreign_attr(node, mine, aliases)
                    if why:
                        bad.append(f"{self.where(name, node)}: {why}")
        return bad

    def foreign_attr(self, node, mine, aliases):
        """Why `x._attr` reaches into another package (None when it does not)."""
        v = node.value
        dotted = ast.unparse(v)
        if dotted in self.mods or (isinstance(v, ast.Name) and v.id in aliases):
            mod = dotted if dotted in self.mods else aliases[v.id]
            if package_of(mod, self.mods) != mine:
                return f"{v.id}._{node.attr[1:]} (module {mod})"
            return None
        if isinstance(v, ast.Name) and v.id in ("self", "cls"):
            return None
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
            return None
        owners = self.owners.get(node.attr, set())
        if owners and mine not in owners:
            return f"{ast.unparse(node)} (private to {', '.join(sorted(owners))})"
        return None

    def import_graph(self) -> dict:
        """module -> modules its import-time statements import."""
        graph = {}
        for name, tree in self.trees.items():
            edges = set()
            for node in runtime_nodes(tree):
                if isinstance(node, ast.Import):
                    edges |= {a.name for a in node.names if a.name in self.mods}
                elif isinstance(node, ast.ImportFrom):
                    src = resolve(node, name, self.mods)
                    for a in node.names:
                        sub = f"{src}.{a.name}"
                        target = sub if sub in self.mods else src
                        if target in self.mods:
                            edges.add(target)
            edges.discard(name)
            graph[name] = sorted(edges)
        return graph


def cycles(graph: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def source():
    return Source()


def test_the_scan_sees_every_package(source):
    pkgs = {package_of(m, source.mods) for m in source.mods}
    want = {"mpidsgd", "mpidsgd.algorithms", "mpidsgd.comm", "mpidsgd.data", "mpidsgd.models",
            "mpidsgd.checkpoint", "mpidsgd.bench", "mpidsgd.kernels", "mpidsgd.kernels.cpu",
            "mpidsgd.kernels.cuda"}
    assert want <= pkgs, want - pkgs


def test_no_module_uses_another_packages_private_names(source):
    bad = source.foreign_private()
    assert not bad, "give these a public name, or move the code:\n" + "\n".join(bad)


def test_no_import_loops(source):
    loops = cycles(source.import_graph())
    assert not loops, "import loops:\n" + "\n".join(" <-> ".join(c) for c in loops)


def test_every_file_is_under_the_line_limit(source):
    long = [f"{os.path.relpath(source.mods[m][0], ROOT)}: {n} lines"
            for m, n in source.lines.items() if n >= MAX_LINES]
    assert not long, f"split these (limit {MAX_LINES} lines):\n" + "\n".join(long)


# -- the checks themselves catch what they are for -------------------------------------
PLANTED = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from .sub.b import _helper\nfrom .sub import b\nb._other()\n"
                "def f(o):\n    return o._secret\n",
    "pkg/loop1.py": "from . import loop2\n",
    "pkg/loop2.py": "from .loop1 import x\ndef late():\n    from . import a\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/b.py": "def _helper():\n    pass\ndef _other():\n    pass\n"
                    "class K:\n    def __init__(self):\n        self._secret = 1\n"
                    "def own(k):\n    return k._secret\n",
    "pkg/long.py": "x = 1\n" * MAX_LINES,
}


def test_the_checks_catch_planted_violations(tmp_path):
    for rel, text in PLANTED.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    src = Source({"pkg": str(tmp_path / "pkg")})
    bad = "\n".join(src.foreign_private())
    assert "from pkg.sub.b import _helper" in bad and "b._other (module pkg.sub.b)" in bad
    assert "o._secret (private to pkg.sub)" in bad
    assert "k._secret" not in bad                 # its own package's name
    assert cycles(src.import_graph()) == [["pkg.loop1", "pkg.loop2"]]
    assert [m for m, n in src.lines.items() if n >= MAX_LINES] == ["pkg.long"]
