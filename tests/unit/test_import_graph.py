"""The layering holds: no import cycles among scheduler's subpackages, and the pure parts stay pure.

Imports are read with `ast` from every module under scheduler/ (function-level imports
included: a cycle hidden in a function is still a cycle). A subpackage is the first name
below `scheduler` (`scheduler.state.store` -> `state`); a top-level module such as
`scheduler.clock` counts as one of its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "scheduler"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> Iterator[str]:
    """Absolute names of the scheduler modules `path` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = (package or module_name(path)).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            # `from scheduler import x` may import a subpackage x.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "scheduler" or len(parts) < 2:
        return None
    candidate = PACKAGE / parts[1]
    if candidate.is_dir() or candidate.with_suffix(".py").is_file():
        return parts[1]
    return None


def subpackage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = subpackage(module_name(path))
        if source is None:
            continue
        targets = graph.setdefault(source, set())
        for name in imported(path):
            target = subpackage(name)
            if target is not None and target != source:
                targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found is not None:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found is not None:
                return found
    return None


def test_the_graph_is_read_from_the_sources() -> None:
    graph = subpackage_graph()
    # Known edges, so that a parser that sees nothing cannot pass the test below.
    assert "core" in graph["state"]
    assert "state" in graph["extender"]
    assert "inventory" in graph["controller"]


def test_no_import_cycles_among_scheduler_subpackages() -> None:
    graph = subpackage_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among scheduler's subpackages: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_and_the_inventory_import_no_stateful_layer() -> None:
    graph = subpackage_graph()
    # The pure placement core: models only (see docs/architecture.md).
    assert graph.get("core", set()) <= {"models"}
    # NodeInventory status and merge rules: shared by agent and controller, needing neither.
    assert graph.get("inventory", set()) <= {"clock"}
    # The cluster state reads no controller, agent or extender.
    assert not graph.get("state", set()) & {"controller", "agent", "extender", "inventory"}
