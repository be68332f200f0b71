"""What a Lua handler runs: its entry's source plus every entry it imports.

Built once per consumer from the registry (no lupa needed) and shared read-only
by all of that consumer's Lua states.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wippy_queue.errors import HandlerError
from wippy_queue.files import read_text
from wippy_queue.functions.lua.config import LuaFunctionConfig, LuaLimits
from wippy_queue.registry.entry import Entry


class LuaHandlerError(HandlerError):
    """The Lua handler raised ``error(...)``; the Lua traceback is in ``__notes__``."""


class LuaLimitError(LuaHandlerError):
    """The handler was stopped: instruction or memory limit reached, or cancelled."""


class LuaValueError(HandlerError):
    """A value cannot cross between Lua and Python (not JSON-able, or out of range)."""


@dataclass(frozen=True, slots=True)
class Unit:
    """One ``function.lua`` entry's chunk, as loaded into a Lua state."""

    id: str
    source: str
    chunkname: str
    modules: tuple[str, ...]
    #: ``require`` alias -> unit id
    imports: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Program:
    entry_id: str
    method: str | None
    units: Mapping[str, Unit]
    limits: LuaLimits
    config: LuaFunctionConfig

    @property
    def main(self) -> Unit:
        return self.units[self.entry_id]


def read_unit(entry: Entry) -> Unit:
    """Read an entry's Lua source; HandlerError says why it cannot be read."""
    config = entry.config
    assert isinstance(config, LuaFunctionConfig)
    if config.source.startswith("file://"):
        path = Path(config.source.removeprefix("file://"))
        try:
            text = read_text(path)
        except (OSError, UnicodeDecodeError) as err:
            raise HandlerError(f"cannot read Lua source {path}: {err}") from err
        chunkname = "@" + path.name
    else:
        text, chunkname = config.source, f"={entry.id}"
    return Unit(entry.id, text, chunkname, tuple(config.modules), dict(config.imports))


def build_program(entry: Entry, entries: Mapping[str, Entry]) -> Program:
    """The entry's unit and, transitively, every unit it imports (looked up in ``entries``)."""
    config = entry.config
    assert isinstance(config, LuaFunctionConfig)
    units: dict[str, Unit] = {}
    pending = [entry]
    while pending:
        current = pending.pop()
        if current.id in units:
            continue
        unit = read_unit(current)
        units[unit.id] = unit
        for alias, target in unit.imports.items():
            imported = entries.get(target)
            if imported is None or not isinstance(imported.config, LuaFunctionConfig):
                raise HandlerError(
                    f"{current.id} imports {target!r} as {alias!r}, which is not a "
                    "function.lua entry of this registry"
                )
            pending.append(imported)
    return Program(entry.id, config.method, units, config.limits, config)
