"""The package's imports point down the layers, and no two modules import each other.

Every module's imports are read with ``ast`` (function-level imports included; imports under
``if TYPE_CHECKING:`` are exempt, they never run). A module may import its own layer or a
lower one; a new sub-package must be given a layer in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "listserv"

# listserv.<first name> -> layer; higher layers may import lower ones, never the reverse
LAYERS: dict[str, int] = {
    "__init__": 0, "core": 0,
    "message": 1, "jobs": 1,
    "delivery": 2, "bounces": 2, "archive": 2, "digests": 2,
    "pipeline": 3, "importers": 3,
    "intake": 4, "web": 4, "admin": 4,
    "daemon": 5, "workers": 5,
    "cli": 6,
    "__main__": 7,
}
SKIP = {"migrations"}   # Alembic scripts: loaded by Alembic, not imported


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if SKIP & set(parts):
            continue
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                ids.update(id(n) for n in ast.walk(stmt))
    return ids


def _known(name: str) -> str:
    """The module ``name`` is, or the nearest package that contains it."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "listserv":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _known(base))
        elif isinstance(node, ast.Import):
            found.update(_known(a.name) for a in node.names if a.name.split(".")[0] == "listserv")
    found.discard(module)
    found.discard("listserv")     # the top package only holds __version__
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    assert key in LAYERS, f"give listserv.{key} a layer in tests/unit/test_layers.py LAYERS"
    return LAYERS[key]


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_imports_point_down() -> None:
    upward = sorted(f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
                    for m, deps in GRAPH.items() for d in deps if layer(d) > layer(m))
    assert not upward, "\n".join(upward)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert not cycles(GRAPH), cycles(GRAPH)


def test_the_checks_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("listserv.core.models") < layer("listserv.pipeline.posting")
    # the daemon sits above the SMTP edge it runs
    assert any(d.startswith("listserv.intake") for d in GRAPH["listserv.daemon"])
