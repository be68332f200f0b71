"""The table of entry kinds: kind name -> config model, plus whole-registry checks.

The loader knows nothing of particular kinds: the caller builds this table (see
``wippy_queue.plugins``). A model may be given as a function that imports it, so
that only the kinds a registry uses are imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wippy_queue.errors import Problem
from wippy_queue.registry.entry import EntryModel

if TYPE_CHECKING:
    from wippy_queue.registry.registry import Registry

#: A check over the whole validated registry (e.g. unresolved policy groups).
RegistryCheck = Callable[["Registry"], Iterable[Problem]]


ModelSource = type[EntryModel] | Callable[[], type[EntryModel]]


@dataclass
class KindTable:
    models: dict[str, ModelSource] = field(default_factory=dict)
    checks: list[RegistryCheck] = field(default_factory=list)

    def register(self, kind: str, model: ModelSource) -> None:
        if kind in self.models:
            raise ValueError(f"kind {kind!r} is already registered")
        self.models[kind] = model

    def add_check(self, check: RegistryCheck) -> None:
        self.checks.append(check)

    def model(self, kind: str) -> type[EntryModel] | None:
        source = self.models.get(kind)
        if source is None or isinstance(source, type):
            return source
        model = self.models[kind] = source()  # imported once, on first use
        return model

    def known(self) -> list[str]:
        return sorted(self.models)
