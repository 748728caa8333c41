"""The package's shape, read from its source with `ast`: no import circles between modules, no import
from a lower layer to a higher one, and no module so long that it hides two ideas.

Every import counts, at any depth (a function-local import is still a dependency: it only moves
the moment it is paid), and relative imports are resolved. `from pkg import name` is an edge to
`pkg.name` when that is a module, else to `pkg` (its __init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "transferkit"

# Lowest first. A module may import its own layer and the layers below it, never one above.
# The names are the first part under transferkit/ (a package or a top-level module); "" is the
# package's own __init__.py (the version and the lazy public names, nothing else).
LAYERS = [
    {"", "errors", "store", "allocator", "progress", "plain_yaml"},
    {"models", "regularizers", "strategies"},
    {"data", "config"},
    {"infer", "report"},
    {"engine", "adaptation", "zeroshot", "embeddings"},
    {"choose", "ship", "dense", "detection", "train"},
    {"api", "demo"},
    {"cli", "__main__"},
]

# (importer, imported): at most one, each with the reason it is allowed.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = ["transferkit", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in known else target)
    edges = set()
    for target in found:
        while target and target not in known:  # `import a.b.c` of a non-module c: the nearest module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its package {top!r} is in no layer of LAYERS; add it where it belongs")


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_reader_sees_local_and_relative_imports(tmp_path):
    # The checks below are only as good as the edges: a function-local, relative import must count.
    pkg = tmp_path / "transferkit" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "checkpoint.py").write_text("")
    src = pkg / "fit.py"
    src.write_text("def f():\n    from . import checkpoint as ck\n    from ..config import X\n")
    known = {"transferkit", "transferkit.engine", "transferkit.engine.checkpoint", "transferkit.config"}
    assert _imports("transferkit.engine.fit", src, known) == {"transferkit.engine.checkpoint",
                                                              "transferkit.config"}
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    circles = _circles(_graph())
    assert not circles, "modules that import each other in a loop:\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def test_no_import_runs_up_a_layer():
    assert len(ALLOWED_UPWARD) <= 1
    upward = []
    for src, targets in _graph().items():
        for dst in targets:
            if _layer(dst) > _layer(src) and (src, dst) not in ALLOWED_UPWARD:
                upward.append(f"{src} -> {dst}")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_every_module_is_in_a_layer():
    for m in _modules():
        _layer(m)


def test_no_module_is_too_long():
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split where the idea splits): {long}"


def test_the_engine_and_the_dense_registry_name_the_same_tasks():
    # engine/run.py refuses a dense run by config.DENSE_TASKS (it may not import transferkit.dense,
    # a layer above it); the two lists must not drift apart
    from transferkit import dense
    from transferkit.config import DENSE_TASKS
    assert set(dense.TASKS) == set(DENSE_TASKS)


def test_no_private_name_is_imported_from_another_package():
    """A name starting with `_` is its module's own business: another package importing it would
    break silently when it is renamed (`from ..pkg.mod import _name`)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                found += [f"{path.relative_to(ROOT.parent)}: from {'.' * node.level}{node.module} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)
