"""The table of entry kinds: kind name -> config model, plus whole-registry checks.

The loader knows nothing of particular kinds; adding a kind (``function.lua``,
``security.policy``, another driver) means registering its model here or in a
table built by the caller, never editing the loader.
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


@dataclass
class KindTable:
    models: dict[str, type[EntryModel]] = field(default_factory=dict)
    checks: list[RegistryCheck] = field(default_factory=list)

    def register(self, kind: str, model: type[EntryModel]) -> None:
        if kind in self.models:
            raise ValueError(f"kind {kind!r} is already registered")
        self.models[kind] = model

    def add_check(self, check: RegistryCheck) -> None:
        self.checks.append(check)

    def model(self, kind: str) -> type[EntryModel] | None:
        return self.models.get(kind)

    def known(self) -> list[str]:
        return sorted(self.models)
