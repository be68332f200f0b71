"""The modules a handler may ``require`` when its entry lists them: json, logger,
queue, time.

Each module is a small Lua shim over Python host functions. The shim keeps the
host functions in an upvalue, so handler code never holds a Python object; host
functions (wrapped by ``Host.guard``) never raise into Lua: they return their
values packed in a table, ``{ok, value_or_error}``, which the shim turns into
Wippy's ``value`` / ``nil, err`` or ``error(...)``. Methods work
with ``.`` and ``:`` alike, as Wippy's docs use both (``logger.info``,
``logger:info``, ``msg:id()``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wippy_queue.errors import SettleError, WippyQueueError
from wippy_queue.functions.lua.convert import BYTES_PER_NODE
from wippy_queue.functions.lua.host import CANCELLED, Host
from wippy_queue.functions.lua.program import LuaValueError
from wippy_queue.queue import context
from wippy_queue.queue.api import context_publish
from wippy_queue.registry.types import parse_duration

HostFunctions = Mapping[str, Callable[..., Any]]


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """``shim``: a Lua chunk returning ``function(host) -> module``; ``host``: builds
    the Python functions that chunk calls, for one Lua state."""

    shim: str
    host: Callable[[Host], HostFunctions]


# -- json ----------------------------------------------------------------------------

JSON_SHIM = """
return function(host)
  local M = {}
  function M.encode(value)
    local r = host.encode(value)
    if r[1] then return r[2] end
    return nil, r[2]
  end
  function M.decode(data)
    if type(data) == "table" then return data end  -- the body is already decoded
    local r = host.decode(data)
    if r[1] then return r[2] end
    return nil, r[2]
  end
  return M
end
"""


def _json_host(host: Host) -> HostFunctions:
    def encode(value: Any) -> tuple[bool, str]:
        try:
            data = host.convert.from_lua(value, "value")
        except LuaValueError as err:
            return False, f"json.encode: {err}"
        return True, json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    def decode(text: Any) -> tuple[bool, Any]:
        if not isinstance(text, str):
            return False, f"json.decode: expected a JSON string, got {_lua_kind(text)}"
        size, left = len(text.encode()), host.memory.left
        if 0 <= left < size:  # its Lua copy would not fit; Python's would be bigger still
            return False, (
                f"json.decode: the text ({size:,} bytes) is larger than the memory this "
                f"call has left ({left:,} bytes of limits.memory_mb)"
            )
        host.convert.copied += size // BYTES_PER_NODE
        try:
            data = json.loads(text)
        except ValueError as err:
            return False, f"json.decode: not valid JSON: {err}"
        try:
            return True, host.convert.to_lua(data, "value")
        except LuaValueError as err:
            return False, f"json.decode: {err}"

    return {
        "encode": host.guard("json.encode", encode),
        "decode": host.guard("json.decode", decode),
    }


def _lua_kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a " + type(value).__name__.removeprefix("_Lua").lower()


# -- logger --------------------------------------------------------------------------

LOGGER_SHIM = """
return function(host)
  local M = {}
  local function level(name)
    return function(a, b, c)
      if a == M then a, b = b, c end
      host.log(name, tostring(a), b)
    end
  end
  M.debug, M.info, M.warn, M.error = level("debug"), level("info"), level("warn"), level("error")
  return M
end
"""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _logger_host(host: Host) -> HostFunctions:
    def log(level: str, message: str, fields: Any) -> None:
        number = _LEVELS[level]
        if not host.log.isEnabledFor(number):
            return
        given = {} if fields is None else host.convert.from_lua(fields, "fields", strict=False)
        extra = dict(given) if isinstance(given, dict) else {"fields": given}
        extra.update(host.fields())  # the runtime's own keys win: a handler cannot fake them
        host.log.log(number, message, extra={"fields": extra})

    return {"log": host.guard("logger", log)}


# -- queue ---------------------------------------------------------------------------

QUEUE_SHIM = """
return function(host)
  local M = {}
  function M.publish(queue_id, data, headers)
    local r = host.publish(queue_id, data, headers)
    if r[1] then return true end
    return nil, r[2]
  end
  function M.message()
    local r = host.message()
    if not r[1] then return nil, r[2] end
    local handle, msg = r[2], {}
    local function method(name)
      return function(a, ...)
        local out
        if a == msg then
          out = host.call(handle, name, ...)
        else
          out = host.call(handle, name, a, ...)
        end
        return out[1], out[2]
      end
    end
    msg.id, msg.header, msg.headers = method("id"), method("header"), method("headers")
    msg.ack, msg.nack = method("ack"), method("nack")
    return msg
  end
  return M
end
"""


def _publish(host: Host) -> Callable[..., tuple[bool, str | None]]:
    def publish(queue_id: Any, data: Any, headers: Any) -> tuple[bool, str | None]:
        if not isinstance(queue_id, str):
            return False, "queue.publish: the first argument is the queue's registry ID (a string)"
        ctx = context.current()
        if ctx is None or ctx.publisher is None or ctx.loop is None:
            return False, "queue.publish: no call context (publish only from a running handler)"
        try:
            body = host.convert.from_lua(data, "data")
            extra = {} if headers is None else host.convert.from_lua(headers, "headers")
        except LuaValueError as err:
            return False, f"queue.publish: {err}"
        if extra == []:
            extra = {}
        if not isinstance(extra, dict):
            return False, "queue.publish: headers must be a table of name = value"
        coro = context_publish(ctx, queue_id, body, extra or None)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, ctx.loop)
        except RuntimeError as err:  # the loop is closed: the runtime is gone
            coro.close()
            return False, f"queue.publish: the runtime is not running ({err})"
        try:
            host.token.wait_for(future)
        except concurrent.futures.CancelledError:
            return False, f"queue.publish: {CANCELLED}"
        except WippyQueueError as err:  # refused: bad data, unknown queue, permission denied
            return False, str(err)
        return True, None

    return publish


def _message_method(host: Host) -> Callable[..., tuple[Any, str | None]]:
    def call(handle_no: int, name: str, arg: Any = None) -> tuple[Any, str | None]:
        handle = host.handles.get(handle_no)
        if handle is None:
            return None, "this message belongs to a finished handler call; use it in the handler"
        try:
            if name == "id":
                return handle.id, None
            if name == "header":
                if not isinstance(arg, str):
                    return None, "header: expected a header name (a string)"
                return handle.header(arg), None
            if name == "headers":
                return host.convert.to_lua(handle.headers(), "headers"), None
            if name == "ack":
                handle.ack()
            else:
                handle.nack("" if arg is None else str(arg))
        except SettleError as err:
            return None, str(err)
        return True, None

    return call


def _queue_host(host: Host) -> HostFunctions:
    def message() -> tuple[bool, Any]:
        ctx = context.current()
        if ctx is None or ctx.message is None:
            return False, "queue.message() is only available inside a consumer's handler"
        return True, host.add_handle(ctx.message)

    return {
        "publish": host.guard("queue.publish", _publish(host)),
        "message": host.guard("queue.message", message),
        "call": host.guard("queue message method", _message_method(host)),
    }


# -- time ----------------------------------------------------------------------------

TIME_SHIM = """
return function(host)
  local M = {}
  function M.now() return host.now()[1] end
  function M.sleep(duration)
    local r = host.sleep(duration)
    if not r[1] then error(r[2], 2) end
  end
  return M
end
"""


def _time_host(host: Host) -> HostFunctions:
    def sleep(duration: Any) -> tuple[bool, str | None]:
        try:
            seconds = parse_duration(duration)
        except ValueError as err:
            return False, f"time.sleep: {err}"
        if host.token.sleep(seconds):  # wakes early when the call is cancelled
            return False, CANCELLED
        return True, None

    return {"now": host.guard("time.now", time.time), "sleep": host.guard("time.sleep", sleep)}


BUILTIN_MODULES: Mapping[str, ModuleSpec] = {
    "json": ModuleSpec(JSON_SHIM, _json_host),
    "logger": ModuleSpec(LOGGER_SHIM, _logger_host),
    "queue": ModuleSpec(QUEUE_SHIM, _queue_host),
    "time": ModuleSpec(TIME_SHIM, _time_host),
}
