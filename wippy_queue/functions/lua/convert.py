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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from lupa import lua51

from wippy_queue.functions.lua.program import LuaValueError

MAX_DEPTH = 100
MAX_EXACT_INT = 2**53
#: an array may have holes as long as its highest index is within this of its length
_SPARSE_RATIO = 2
_SPARSE_SLACK = 10


class Converter:
    """Converts for one Lua state; ``api`` is the prelude's table of internals."""

    def __init__(self, runtime: Any, api: Any) -> None:
        self._runtime = runtime
        self._array_mt = api.array_mt
        self._setmetatable = api.setmetatable
        self._getmetatable = api.getmetatable
        self._rawequal = api.rawequal

    # -- Python -> Lua ---------------------------------------------------------------

    def to_lua(self, value: Any, path: str = "value", depth: int = 0) -> Any:
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
        if isinstance(value, Mapping):
            return self._object(value, path, depth)
        if isinstance(value, list | tuple):
            return self._list(value, path, depth)
        raise LuaValueError(f"{path}: a {type(value).__name__} cannot cross into Lua")

    def _object(self, value: Mapping[Any, Any], path: str, depth: int) -> Any:
        table = self._runtime.table()
        for key, item in value.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise LuaValueError(f"{path}: a {type(key).__name__} key cannot cross into Lua")
            if item is not None:
                table[key] = self.to_lua(item, f"{path}.{key}", depth + 1)
        return table

    def _list(self, value: list[Any] | tuple[Any, ...], path: str, depth: int) -> Any:
        table = self._runtime.table()
        for index, item in enumerate(value, 1):
            if item is not None:
                table[index] = self.to_lua(item, f"{path}[{index}]", depth + 1)
        self._setmetatable(table, self._array_mt)
        return table

    # -- Lua -> Python ---------------------------------------------------------------

    def from_lua(self, value: Any, path: str = "value", *, strict: bool = True) -> Any:
        """A JSON-able copy of ``value``; with ``strict=False`` (logging) odd values
        become descriptive strings instead of errors."""
        try:
            return self._from(value, path, strict, 0)
        except UnicodeDecodeError as err:
            if not strict:
                return "<not UTF-8>"
            raise LuaValueError(
                f"{path}: holds a string that is not valid UTF-8 ({err.reason}); "
                "binary data cannot cross as JSON"
            ) from None

    def _from(self, value: Any, path: str, strict: bool, depth: int) -> Any:
        if value is None or isinstance(value, bool | str):
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
        items = list(value.items())
        if not items:
            marked = self._rawequal(self._getmetatable(value), self._array_mt)
            return [] if marked else {}
        if all(isinstance(k, str) for k, _ in items):
            return {k: self._from(v, f"{path}.{k}", strict, depth + 1) for k, v in items}
        return self._array(items, path, strict, depth)

    def _array(self, items: list[tuple[Any, Any]], path: str, strict: bool, depth: int) -> Any:
        keys = [k for k, _ in items]
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in keys):
            return self._odd(
                path,
                "a table mixing array items and named keys (or with keys that are not "
                "strings or 1..n) cannot cross as JSON",
                strict,
            )
        size = max(keys)
        if size > max(_SPARSE_SLACK, _SPARSE_RATIO * len(keys)):
            return self._odd(path, f"a sparse array ({len(keys)} items up to [{size}])", strict)
        out: list[Any] = [None] * size
        for key, item in items:
            out[key - 1] = self._from(item, f"{path}[{key}]", strict, depth + 1)
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
        except LuaValueError:
            return "a table (not JSON-able)"
    return str(value)
