"""The package's imports point one way: each module imports only its own layer or lower.

identity/errors/tasks -> registry -> lifecycle -> queue -> drivers/functions ->
security/audit -> plugins/loading/runtime -> cli/policytools. A module that imports
upward (even for a type) fails here, naming the import, so the layering stays.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wippy_queue

PACKAGE = Path(wippy_queue.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("errors", "identity", "policies", "files", "tasks"),
    ("registry",),
    ("lifecycle",),
    ("queue",),
    ("drivers", "functions"),
    ("security", "audit"),
    ("plugins", "loading", "runtime"),
    (
        "cli",
        "cli_args",
        "cli_audit",
        "cli_policy",
        "cli_run",
        "logs",
        "policytools",
        "testing",
        "__main__",
        "__init__",
    ),
]
#: modules of the same layer that must not import each other
APART = [("security", "audit"), ("drivers", "functions")]


def _top(module: str) -> str:
    """``wippy_queue.queue.consumer`` -> ``queue``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(top: str) -> int:
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"wippy_queue.{top} is in no layer: add it to LAYERS")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``wippy_queue`` module ``path`` imports (``from wippy_queue import x`` -> x)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "wippy_queue":
                found += [(node.lineno, f"wippy_queue.{alias.name}") for alias in node.names]
            elif node.module.startswith("wippy_queue."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("wippy_queue")]
    return found


def _violations() -> list[str]:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _top(_module_name(path))
        for line, target in _imports(path):
            top = _top(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line}: imports {target}"
            if _layer(top) > _layer(source):
                wrong.append(f"{where} (layer {_layer(top)} above {_layer(source)})")
            elif top != source and ((source, top) in APART or (top, source) in APART):
                wrong.append(f"{where} ({source} and {top} are kept apart)")
    return wrong


def test_no_module_imports_a_higher_layer() -> None:
    assert _violations() == []


def test_the_check_would_catch_an_upward_import(tmp_path: Path) -> None:
    upward = tmp_path / "m.py"
    upward.write_text(
        "from wippy_queue import runtime\nfrom wippy_queue.queue.driver import Driver\n"
    )
    assert [t for _, t in _imports(upward)] == ["wippy_queue.runtime", "wippy_queue.queue.driver"]
    assert _layer(_top("wippy_queue.runtime")) > _layer(_top("wippy_queue.queue.driver"))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` (module -> modules it imports), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return None


def test_no_import_circle_even_for_types() -> None:
    """A package's ``__init__`` re-exporting its modules is not an edge; everything else
    is, ``if TYPE_CHECKING:`` imports included (a circle for a type is still a circle)."""
    modules = _modules()
    graph = {
        name: {target for _, target in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
        if path.name != "__init__.py"
    }
    assert _cycle(graph) is None


def test_the_circle_check_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
