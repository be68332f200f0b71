"""Who a call runs as: an actor ``{id, meta}`` (Wippy's shape)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class Actor:
    """Immutable, meta included: whatever mapping is given is copied read-only, so
    no caller (a handler, a policy condition) can change who a call runs as."""

    id: str
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def tenant(self) -> str | None:
        value = self.meta.get("tenant")
        return None if value is None else str(value)
