"""A validated registry entry and the base of every kind's config model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class Reference:
    """A field of an entry that names another entry.

    ``kinds`` lists the kinds the target may have (a trailing ``*`` matches a
    family, e.g. ``security.policy*``); ``dependency`` says whether the target must
    start before the referrer.
    """

    field: str
    target: str
    kinds: tuple[str, ...]
    dependency: bool = True

    def allows(self, kind: str) -> bool:
        return any(kind.startswith(k[:-1]) if k.endswith("*") else kind == k for k in self.kinds)


class StrictModel(BaseModel):
    """Base of nested config blocks: unknown fields are rejected, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EntryModel(BaseModel):
    """Base of the per-kind models: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def references(self) -> list[Reference]:
        """Every registry ID this entry names; the loader checks each one."""
        return []


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    field_lines: dict[str, int] = field(default_factory=dict, compare=False)

    def line_of(self, name: str | None) -> int:
        """Line of a field, dotted for nested ones (``lifecycle.requires``), else the nearest."""
        if name is None:
            return self.line
        if name in self.field_lines:
            return self.field_lines[name]
        return self.field_lines.get(name.split(".")[0], self.line)


@dataclass(frozen=True, slots=True)
class Entry:
    """One registry entry: identity, where it was written, and its typed config."""

    id: str
    kind: str
    namespace: str
    name: str
    meta: dict[str, Any]
    config: EntryModel
    location: Location
