"""Cycles in a directed graph of registry IDs (dependencies, Lua imports)."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def find_cycles(nodes: Iterable[str], edges: Callable[[str], Iterable[str]]) -> list[list[str]]:
    """Each cycle once, as ``[a, b, ..., a]``, found by a depth-first walk in sorted order."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    seen: set[frozenset[str]] = set()

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for target in edges(node):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(cycle)
            elif target not in state:
                visit(target, path)
        path.pop()
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            visit(node, [])
    return cycles
