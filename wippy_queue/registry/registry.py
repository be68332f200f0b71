"""The validated, cross-referenced set of entries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from wippy_queue.errors import Problem, RegistryError
from wippy_queue.registry.entry import Entry, EntryModel


@dataclass(frozen=True)
class Registry:
    entries: dict[str, Entry]
    #: entry id -> ids it depends on (explicit ``requires``/``depends_on`` and references)
    dependencies: dict[str, tuple[str, ...]]
    #: non-fatal findings (``validate`` prints them)
    warnings: tuple[Problem, ...] = ()
    #: every file read while loading -> SHA-256 of the bytes read (for a watcher)
    files: Mapping[str, str] = field(default_factory=dict)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self.entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def get(self, entry_id: str) -> Entry:
        try:
            return self.entries[entry_id]
        except KeyError:
            known = ", ".join(sorted(self.entries)) or "none"
            raise RegistryError(f"no entry {entry_id!r}; known entries: {known}") from None

    def config(self, entry_id: str) -> EntryModel:
        return self.get(entry_id).config

    def of_kind(self, prefix: str) -> list[Entry]:
        """Entries whose kind equals ``prefix`` or, if it ends in ``*``, starts with it."""
        if prefix.endswith("*"):
            return [e for e in self if e.kind.startswith(prefix[:-1])]
        return [e for e in self if e.kind == prefix]

    def closure(self, entry_id: str) -> list[str]:
        """``entry_id`` and everything it depends on, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node: str) -> None:
            if node in seen:
                return
            seen.add(node)
            for dep in self.dependencies.get(node, ()):
                visit(dep)
            order.append(node)

        visit(entry_id)
        return order

    def start_order(self) -> list[str]:
        """Every entry, each after its dependencies (stable by id)."""
        order: list[str] = []
        seen: set[str] = set()
        for entry_id in sorted(self.entries):
            for node in self.closure(entry_id):
                if node not in seen:
                    seen.add(node)
                    order.append(node)
        return order
