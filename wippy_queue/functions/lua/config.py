"""``function.lua`` entry fields: the pydantic model the loader validates against.

Nothing here imports lupa: a registry with ``function.lua`` entries validates (and
reports every problem) without the ``lua`` extra installed; only building a handler
needs it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from wippy_queue.registry.entry import EntryModel, Reference
from wippy_queue.registry.types import Ref

#: The modules a handler may ``require`` when its entry lists them (Wippy's names).
MODULE_NAMES = ("json", "logger", "queue", "time")

_IDENT = r"^[A-Za-z_]\w*$"
_ALIAS = re.compile(r"^[A-Za-z_][\w.\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LuaPool(_Strict):
    """Wippy's ``pool`` block; here it only decides how many Lua states (threads) a
    consumer gets. ``buffer`` and ``workers`` are accepted for compatibility."""

    type: Literal["inline", "static", "lazy", "adaptive"] | None = None
    size: int | None = Field(default=None, ge=1, le=1000)
    max_size: int | None = Field(default=None, ge=1, le=1000)
    buffer: int | None = Field(default=None, ge=0)
    workers: int | None = Field(default=None, ge=0, le=1000)

    @model_validator(mode="after")
    def _sized(self) -> LuaPool:
        if self.type == "static" and self.size is None:
            raise ValueError("a static pool needs 'size': how many Lua states it keeps")
        if self.type in ("lazy", "adaptive") and self.max_size is None:
            raise ValueError(f"a {self.type} pool needs 'max_size': the most Lua states it makes")
        return self

    def states(self, concurrency: int) -> int:
        """How many Lua states serve a consumer of ``concurrency`` workers."""
        kind = self.type
        if kind is None:  # Wippy's legacy implicit mode
            if self.workers and self.size:
                kind = "static"
            elif self.max_size:
                kind = "lazy"
            else:
                kind = "inline"
        if kind == "static":
            assert self.size is not None
            return self.size
        if kind in ("lazy", "adaptive"):
            assert self.max_size is not None
            return self.max_size
        return concurrency  # inline: one per caller


class LuaLimits(_Strict):
    """Bounds that stop a runaway handler (it is then nacked, its Lua state replaced).

    ``instructions`` counts Lua VM instructions per call (100 million is a few tenths
    of a second of pure Lua); ``memory_mb`` caps one Lua state, which runs one call
    at a time, so it bounds a call plus whatever the handler keeps in globals.
    """

    instructions: int = Field(default=100_000_000, ge=10_000, le=10**12)
    memory_mb: int = Field(default=64, ge=1, le=65_536)


class LuaFunctionConfig(EntryModel):
    """``function.lua``: a Lua handler run in a sandboxed Lua 5.1 state (lupa)."""

    source: str
    method: str | None = Field(default=None, pattern=_IDENT)
    modules: list[str] = Field(default_factory=list)
    imports: dict[str, Ref] = Field(default_factory=dict)
    pool: int | LuaPool | None = Field(default=None)
    limits: LuaLimits = Field(default_factory=LuaLimits)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if "\n" in value:
            return value  # inline Lua code
        if not value.startswith("file://"):
            raise ValueError(
                f"source {value!r} is neither file://path.lua nor inline Lua code; "
                "write e.g. 'source: file://handler.lua'"
            )
        path = Path(value.removeprefix("file://"))
        if path.suffix != ".lua":
            raise ValueError(f"source {path} is not a .lua file")
        if not path.is_file():
            raise ValueError(f"source file {path} does not exist")
        return value

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODULE_NAMES]
        if unknown:
            names = ", ".join(repr(m) for m in unknown)
            raise ValueError(
                f"unknown module{'s' * (len(unknown) > 1)} {names}; "
                f"available modules: {', '.join(MODULE_NAMES)}"
            )
        return list(dict.fromkeys(value))

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: int | LuaPool | None) -> int | LuaPool | None:
        if isinstance(value, int) and not 1 <= value <= 1000:
            raise ValueError(f"pool {value} is out of range: give 1 to 1000 Lua states")
        return value

    @model_validator(mode="after")
    def _aliases(self) -> LuaFunctionConfig:
        for alias in self.imports:
            if not _ALIAS.match(alias):
                raise ValueError(
                    f"import alias {alias!r} is not a module name: use letters, digits, "
                    "'_', '.' and '-', starting with a letter"
                )
            if alias in MODULE_NAMES:
                raise ValueError(
                    f"import alias {alias!r} would hide the built-in module {alias!r}; rename it"
                )
        return self

    def references(self) -> list[Reference]:
        return [
            Reference(f"imports.{alias}", target, ("function.lua",), dependency=False)
            for alias, target in self.imports.items()
        ]

    def states(self, concurrency: int) -> int:
        """How many Lua states (and threads) a consumer of ``concurrency`` workers gets."""
        if self.pool is None:
            return concurrency
        if isinstance(self.pool, int):
            return self.pool
        return self.pool.states(concurrency)
