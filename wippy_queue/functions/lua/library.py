"""``function.lua`` in the plugin table: the registry check and the builder.

A Lua handler also needs the entries it ``imports``: the builder reads them from the
registry it is given, and the registry check rejects import cycles at load. lupa is
imported only when a handler is built, so that loading needs no Lua.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from wippy_queue.errors import HandlerError, Problem
from wippy_queue.functions.lua.config import LuaFunctionConfig
from wippy_queue.queue.handler import Handler
from wippy_queue.registry.entry import Entry
from wippy_queue.registry.graph import find_cycles
from wippy_queue.registry.registry import Registry

KIND = "function.lua"


def check(registry: Registry) -> list[Problem]:
    """The loader's check: import cycles between the registry's function.lua entries."""
    return import_cycles({e.id: e for e in registry.of_kind(KIND)})


class LuaFunctions:
    """The builder of ``function.lua`` handlers (one per runtime)."""

    def build(self, entry: Entry, registry: Registry) -> Handler:
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
        program = build_program(entry, {e.id: e for e in registry.of_kind(KIND)})
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
