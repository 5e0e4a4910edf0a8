"""The package's import graph: layered, without cycles. Every module of genrm_jax is read with `ast` (imports inside
functions included, since they hide cycles rather than remove them) and the graph of its imports of genrm_jax
modules is checked. Imports inside functions are for heavy optional dependencies only, never for genrm_jax's own
modules."""
from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "genrm_jax")


def modules(root: str = PACKAGE) -> dict[str, str]:
    """{dotted module name: path} of every .py file under the package directory `root`."""
    base = os.path.dirname(root)
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _package_of(name: str, path: str) -> str:
    return name if path.endswith("__init__.py") else name.rpartition(".")[0]


def imports(name: str, path: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """[(imported genrm_jax module, line, inside a function)] of one module."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    target = a.name
                    while target and target not in known:
                        target = target.rpartition(".")[0]
                    if target:
                        out.append((target, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: from the module's package upwards
                    pkg = _package_of(name, path).split(".")
                    pkg = pkg[:len(pkg) - (child.level - 1)]
                    mod = ".".join(pkg + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for a in child.names:
                    if f"{mod}.{a.name}" in known:  # a submodule
                        out.append((f"{mod}.{a.name}", child.lineno, in_function))
                    elif mod in known:
                        out.append((mod, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(t, line, f) for t, line, f in out if t != name]


def graph(root: str = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the genrm_jax modules it imports, ["module:line imports x inside a function", ...])."""
    mods = modules(root)
    known = set(mods)
    edges, inside = {}, []
    for name, path in mods.items():
        found = imports(name, path, known)
        edges[name] = {t for t, _, _ in found}
        inside += [f"{name}:{line} imports {t} inside a function" for t, line, f in found if f]
    return edges, inside


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


# The layers, lowest first (docs/ARCHITECTURE: models, io, tokenizer, sharding -> data, sampling, losses, train ->
# judge, finetune -> star, baselines -> experiment -> experiments/). A module imports its own layer or lower ones;
# a package's submodules share its layer; a module not listed here is on the top layer (nothing below imports it).
LAYERS = (
    ("methods", "config_util", "runtime", "distributed", "runs", "cli", "tokenizer", "sharding", "models", "io",
     "data.rubrics"),
    ("data", "sampling", "losses", "train", "checkpoint", "evaluation"),
    ("judge", "finetune", "merge", "plan", "report"),
    ("star", "baselines"),
)


def layer(module: str) -> int:
    name = module.removeprefix("genrm_jax.")
    best = (len(LAYERS), 0)  # (layer, length of the matching entry): the longest match wins
    for i, names in enumerate(LAYERS):
        for n in names:
            if (name == n or name.startswith(n + ".")) and len(n) > best[1]:
                best = (i, len(n))
    return best[0]


def test_the_walk_sees_function_level_imports_and_finds_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    edges, inside = graph(str(pkg))
    assert edges["pkg.a"] == {"pkg.sub.b"} and edges["pkg.sub.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert cycles(edges) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert inside == ["pkg.sub.b:2 imports pkg.c inside a function"]


def test_no_import_cycles():
    found = cycles(graph()[0])
    assert not found, "import cycles in genrm_jax: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_upward_imports():
    edges = graph()[0]
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})" for m in sorted(edges) for t in sorted(edges[m])
          if layer(t) > layer(m)]
    assert not up, "\n".join(up)
    assert layer("genrm_jax.data.rubrics") == 0 and layer("genrm_jax.data.splits") == 1
    assert layer("genrm_jax.experiment") == len(LAYERS)


def test_genrm_jax_modules_are_imported_at_module_level():
    """Imports inside functions only for heavy optional dependencies (torch, transformers, matplotlib, ...), never
    for genrm_jax's own modules (that hides a cycle instead of removing it)."""
    inside = graph()[1]
    assert not inside, "\n".join(inside)
