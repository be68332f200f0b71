"""``function.lua`` in a Components table: the registry check and the builder.

The builder gets one entry, but a Lua handler also needs the entries it
``imports``; the registry check (which the loader runs with the whole registry)
indexes them and rejects import cycles. lupa is imported only when a handler is
built, so that the package works without the ``lua`` extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from wippy_queue.errors import HandlerError, Problem
from wippy_queue.functions.base import Handler
from wippy_queue.functions.lua.config import LuaFunctionConfig
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.graph import find_cycles
from wippy_queue.registry.registry import Registry

KIND = "function.lua"


class LuaFunctions:
    """Registered once per Components table: ``check`` is the loader's registry check,
    ``build`` the function factory."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def check(self, registry: Registry) -> list[Problem]:
        """Index the registry's function.lua entries; report import cycles."""
        self._entries = {e.id: e for e in registry.of_kind(KIND)}
        return import_cycles(self._entries)

    def build(self, entry: Entry) -> Handler:
        """A LuaHandler for ``entry``; HandlerError (a load problem) says what is wrong."""
        try:
            importlib.import_module("lupa.lua51")
        except ImportError as err:
            raise HandlerError(
                f"{entry.id} is a function.lua entry, which needs lupa (embedded Lua): "
                "pip install 'lupa>=2.0' (a dependency of wippy-queue)"
            ) from err
        from wippy_queue.functions.lua.handler import LuaHandler
        from wippy_queue.functions.lua.program import build_program
        from wippy_queue.functions.lua.state import check_syntax

        assert isinstance(entry.config, LuaFunctionConfig)
        if entry.config.imports and self._entries.get(entry.id) is not entry:
            raise HandlerError(
                f"{entry.id} has imports, but its registry was not loaded with these "
                "components (use Runtime.load, or load_registry with the same kinds table)"
            )
        program = build_program(entry, self._entries)
        check_syntax(program)
        handler = LuaHandler(program)
        handler.check_load()
        return handler


def import_cycles(entries: Mapping[str, Entry]) -> list[Problem]:
    """One problem per cycle of ``imports`` (a chunk cannot require itself, even indirectly)."""

    def imports(node: str) -> list[str]:
        config = entries[node].config
        assert isinstance(config, LuaFunctionConfig)
        return [t for t in config.imports.values() if t in entries]  # else: reported already

    problems = []
    for cycle in find_cycles(entries, imports):
        entry = entries[cycle[0]]
        problems.append(
            Problem(
                f"import cycle: {' -> '.join(cycle)}; a Lua chunk cannot require "
                "itself, even through another entry",
                entry.location.file,
                entry.location.line_of("imports"),
                entry.id,
                "imports",
            )
        )
    return problems
