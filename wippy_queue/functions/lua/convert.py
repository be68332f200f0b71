"""Values across the Lua boundary: JSON-shaped Python data <-> natural Lua values.

Lua 5.1 has one number type (a double), no null and one table type, so: an
integer a double cannot hold exactly (beyond 2^53) is refused rather than rounded;
an integral number comes back as an int (2.0 becomes 2); JSON null becomes nil (a
key holding null disappears, a null inside an array comes back as null); tables
made from Python lists carry a marker metatable so that an empty array comes back
as ``[]`` (an unmarked empty table is ``{}``). Going back, a table is an array when
its keys are 1..n (holes become null), an object when its keys are all strings;
anything else, and functions, coroutines, userdata, NaN and infinities, give a
LuaValueError naming where the value sits.

A Lua value is a graph: ``t = {t, t}`` nested 30 times is a few KB in Lua but a
billion nodes as JSON. So every conversion out of Lua is bounded by the state's
memory limit: at most one value per ``BYTES_PER_NODE`` bytes of it and its size in
string bytes, counted as the copy grows (``ValueTooLarge``). Going in, a conversion
made during a call stops once the call is over its memory ceiling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from lupa import lua51

from wippy_queue.functions.lua.memory import Memory
from wippy_queue.functions.lua.program import LuaLimitError, LuaValueError

MAX_DEPTH = 100
#: a copy out of Lua may hold one value (table, string, number...) per this many
#: bytes of the memory limit: 16,384 per MB, about a million at the default 64 MB
BYTES_PER_NODE = 64
#: what copying one value costs, in Lua instructions (about 1 µs against 10 ns): module
#: functions charge it to the call's budget, so a loop of copies is a loop like any other
NODE_COST = 100
#: how often (in values) a copy into Lua checks the call's memory ceiling
_MEMORY_CHECK_EVERY = 1024
MAX_EXACT_INT = 2**53
#: an array may have holes as long as its highest index is within this of its length
_SPARSE_RATIO = 2
_SPARSE_SLACK = 10


class ValueTooLarge(LuaLimitError):
    """A value copied across expands past the state's bounds; copying stopped early.

    A limit, not a bad value: inside a call it stops the call (see ``Host.guard``)."""


class _Count:
    """What one conversion has produced so far, against its bounds."""

    __slots__ = ("bytes", "max_bytes", "max_nodes", "nodes", "root")

    def __init__(self, root: str, memory_bytes: int) -> None:
        self.root = root
        self.nodes = self.bytes = 0
        self.max_nodes = memory_bytes // BYTES_PER_NODE
        self.max_bytes = memory_bytes

    def add(self, size: int = 0) -> None:
        """Count one value of ``size`` string bytes; ValueTooLarge past a bound."""
        self.nodes += 1
        self.bytes += size
        if self.nodes > self.max_nodes:
            raise ValueTooLarge(
                f"{self.root}: the value expands to more than {self.max_nodes:,} values (one per "
                f"{BYTES_PER_NODE} bytes of limits.memory_mb); a table holding another many "
                "times?"
            )
        if self.bytes > self.max_bytes:
            raise ValueTooLarge(
                f"{self.root}: the value expands to more than {self.max_bytes:,} bytes of strings "
                "(limits.memory_mb); a table holding a long string many times?"
            )


class Converter:
    """Converts for one Lua state; ``api`` is the prelude's table of internals."""

    def __init__(self, runtime: Any, api: Any, memory: Memory) -> None:
        self._runtime = runtime
        self._memory = memory
        #: values copied since the host last charged them to the call (see ``NODE_COST``)
        self.copied = 0
        self._array_mt = api.array_mt
        self._setmetatable = api.setmetatable
        self._getmetatable = api.getmetatable
        self._rawequal = api.rawequal

    # -- Python -> Lua ---------------------------------------------------------------

    def to_lua(self, value: Any, path: str = "value") -> Any:
        """A Lua copy of JSON-shaped ``value`` (``path`` names it in errors)."""
        count = [0]
        try:
            return self._to(value, path, 0, count)
        finally:
            self.copied += count[0]

    def _to(self, value: Any, path: str, depth: int, count: list[int]) -> Any:
        if value is None or isinstance(value, bool | str | float | bytes):
            return value
        if isinstance(value, int):
            if abs(value) > MAX_EXACT_INT and int(float(value)) != value:
                raise LuaValueError(
                    f"{path}: the integer {value} is not exactly representable as a Lua 5.1 "
                    "number (a double: integers are exact up to 2^53); send it as a string"
                )
            return value
        if depth >= MAX_DEPTH:
            raise LuaValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        count[0] += 1
        if count[0] % _MEMORY_CHECK_EVERY == 0 and self._memory.exceeded:
            raise ValueTooLarge(f"{path}: over the call's memory limit (limits.memory_mb)")
        if isinstance(value, Mapping):
            return self._object(value, path, depth, count)
        if isinstance(value, list | tuple):
            return self._list(value, path, depth, count)
        raise LuaValueError(f"{path}: a {type(value).__name__} cannot cross into Lua")

    def _object(self, value: Mapping[Any, Any], path: str, depth: int, count: list[int]) -> Any:
        table = self._runtime.table()
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise LuaValueError(f"{path}: a {type(key).__name__} key cannot cross into Lua")
            if item is not None:
                table[key] = self._to(item, f"{path}.{key}", depth + 1, count)
        return table

    def _list(
        self, value: list[Any] | tuple[Any, ...], path: str, depth: int, count: list[int]
    ) -> Any:
        table = self._runtime.table()
        for index, item in enumerate(value, 1):
            if item is not None:
                table[index] = self._to(item, f"{path}[{index}]", depth + 1, count)
        self._setmetatable(table, self._array_mt)
        return table

    # -- Lua -> Python ---------------------------------------------------------------

    def from_lua(self, value: Any, path: str = "value", *, strict: bool = True) -> Any:
        """A JSON-able copy of ``value``; with ``strict=False`` (logging) odd values
        become descriptive strings instead of errors."""
        count = _Count(path, self._memory.limit_bytes)
        try:
            return self._from(value, path, strict, 0, count)
        except UnicodeDecodeError as err:
            if not strict:
                return "<not UTF-8>"
            raise LuaValueError(
                f"{path}: holds a string that is not valid UTF-8 ({err.reason}); "
                "binary data cannot cross as JSON"
            ) from None
        finally:
            self.copied += count.nodes + count.bytes // BYTES_PER_NODE

    def _from(self, value: Any, path: str, strict: bool, depth: int, count: _Count) -> Any:
        if isinstance(value, str):
            count.add(len(value))
            return value
        count.add()
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):  # lupa gives integral doubles as int
            return value if abs(value) <= MAX_EXACT_INT else float(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return self._odd(path, f"the number {value} is not valid JSON", strict)
        kind = lua51.lua_type(value)
        if kind != "table":
            return self._odd(path, f"a {_kind_name(value, kind)} cannot cross as JSON", strict)
        if depth >= MAX_DEPTH:
            return self._odd(
                path, f"nested deeper than {MAX_DEPTH} levels (a table containing itself?)", strict
            )
        return self._table(value, path, strict, depth + 1, count)

    def _table(self, table: Any, path: str, strict: bool, depth: int, count: _Count) -> Any:
        """Items are copied as they are read (a table may hold one big value many times)."""
        named: dict[str, Any] = {}
        indexed: dict[int, Any] = {}
        for key, item in table.items():
            if isinstance(key, str):
                count.add(len(key))
                named[key] = self._from(item, f"{path}.{key}", strict, depth, count)
            elif isinstance(key, int) and not isinstance(key, bool) and key >= 1:
                indexed[key] = self._from(item, f"{path}[{key}]", strict, depth, count)
            else:  # a key that is neither a name nor an index
                break
        else:
            if not indexed:
                if named:
                    return named
                marked = self._rawequal(self._getmetatable(table), self._array_mt)
                return [] if marked else {}
            if not named:
                return self._array(indexed, path, strict)
        return self._odd(
            path,
            "a table mixing array items and named keys (or with keys that are not "
            "strings or 1..n) cannot cross as JSON",
            strict,
        )

    def _array(self, items: dict[int, Any], path: str, strict: bool) -> Any:
        size = max(items)
        if size > max(_SPARSE_SLACK, _SPARSE_RATIO * len(items)):
            return self._odd(path, f"a sparse array ({len(items)} items up to [{size}])", strict)
        out: list[Any] = [None] * size
        for key, item in items.items():
            out[key - 1] = item
        return out

    @staticmethod
    def _odd(path: str, problem: str, strict: bool) -> Any:
        if strict:
            raise LuaValueError(f"{path}: {problem}")
        return f"<{problem}>"


def _kind_name(value: Any, kind: str | None) -> str:
    if kind is None:
        return "Python object"
    if "Coroutine" in type(value).__name__:  # lupa reports a coroutine as a function
        return "coroutine"
    return kind


def describe(value: Any, converter: Converter) -> str:
    """A Lua error value as text: strings as they are, tables as JSON when they can be."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if lua51.lua_type(value) == "table":
        try:
            return json.dumps(converter.from_lua(value), sort_keys=True)
        except ValueTooLarge:
            return "a table (too large to show)"
        except LuaValueError:
            return "a table (not JSON-able)"
    return str(value)
