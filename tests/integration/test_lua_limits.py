"""Limits a handler cannot get around: a stopped call stays stopped whatever it catches
(pcall, xpcall, coroutines), coroutines are counted, and memory is one ceiling per call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from typing import Any

import pytest
from lua_support import World, lua_handler, one_call, program, run

from wippy_queue.functions.lua.config import LuaLimits
from wippy_queue.functions.lua.handler import LuaHandler
from wippy_queue.functions.lua.host import Host
from wippy_queue.functions.lua.modules import BUILTIN_MODULES, HostFunctions, ModuleSpec
from wippy_queue.functions.lua.program import LuaHandlerError, LuaLimitError

SMALL = LuaLimits(instructions=1_000_000, memory_mb=16)
ROOMY = LuaLimits(instructions=10**10, memory_mb=16)  # memory is the limit that bites
#: a call that is stopped is stopped at once: a hang fails the test fast
BOUND_S = 5.0

SPIN = "coroutine.wrap(function() while true do end end)"

#: each tries to go on after the instruction limit fired, then ends normally
CATCHES = {
    "pcall of a coroutine": f"pcall({SPIN})",
    "coroutine.resume": "coroutine.resume(coroutine.create(function() while true do end end))",
    "xpcall with a handler": f"xpcall({SPIN}, function(e) return e end)",
    "a coroutine inside a coroutine": (
        f"coroutine.resume(coroutine.create(function() pcall({SPIN}) end))"
    ),
    "re-raised as a table, caught again": (
        f"pcall(function() local ok, e = pcall({SPIN}) error({{e}}) end)"
    ),
    "error() with a level": f"pcall(function() local ok, e = pcall({SPIN}) error(e, 2) end)",
    "then a pcall loop": (
        f"pcall({SPIN}) for n = 1, 1e9 do pcall(function() for i = 1, 1e9 do end end) end"
    ),
}


def survivors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What handlers printed (``print`` goes to the log)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("wippy_queue.lua.")]


@pytest.mark.parametrize("catch", CATCHES.values(), ids=CATCHES.keys())
def test_an_exceeded_instruction_limit_cannot_be_caught(
    catch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wippy_queue.lua")
    lua = f"return function(b) if b.ok then return true end {catch} print('survived') end"

    async def go() -> tuple[BaseException | None, bool]:
        handler = lua_handler(lua, limits=SMALL)
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            stopped = None
            try:
                await world.call(handler, {})
            except LuaLimitError as err:
                stopped = err
            _, outcome = await world.call(handler, {"ok": True})  # the next message runs
            return stopped, outcome.ack
        finally:
            await handler.close()

    stopped, acked = run(go(), timeout_s=BOUND_S)
    assert "stopped after 1,000,000 Lua instructions" in str(stopped)
    assert survivors(caplog) == []  # nothing ran after the limit fired
    assert acked


MEMORY_CATCHES = {
    "pcall": "pcall(string.rep, 'x', 1e8)",
    "xpcall": "xpcall(function() return string.rep('x', 1e8) end, function(e) return e end)",
    "coroutine": "coroutine.resume(coroutine.create(function() return string.rep('x', 1e8) end))",
}


@pytest.mark.parametrize("catch", MEMORY_CATCHES.values(), ids=MEMORY_CATCHES.keys())
def test_an_exceeded_memory_limit_cannot_be_caught(
    catch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wippy_queue.lua")
    lua = f"return function() {catch} print('survived') end"
    with pytest.raises(LuaLimitError, match="more than its memory limit of 16 MB"):
        run(one_call(lua, limits=ROOMY), timeout_s=BOUND_S)
    assert survivors(caplog) == []


def test_short_lived_coroutines_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    # each coroutine ends before its own hook would fire: its instructions still count
    lua = """
        return function()
            local n = 0
            while true do
                coroutine.wrap(function() for i = 1, 100 do end end)()
                n = n + 1
                if n % 100 == 0 then print(n) end
            end
        end
    """
    caplog.set_level(logging.INFO, logger="wippy_queue.lua")
    with pytest.raises(LuaLimitError, match="stopped after 1,000,000 Lua instructions"):
        run(one_call(lua, limits=SMALL), timeout_s=BOUND_S)
    printed = [int(text) for text in survivors(caplog)]
    assert printed and max(printed) * 100 <= 1_000_000  # not ~300x the limit, as before


def test_a_timed_out_handler_cannot_catch_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="wippy_queue.lua")
    lua = """
        local time = require("time")
        return function(b)
            if b.ok then return true end
            pcall(time.sleep, 10)  -- woken by the timeout
            print("went on after its timeout")
        end
    """

    async def go() -> Any:
        handler = lua_handler(lua, modules=["time"])
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await world.call(handler, {})
            _, outcome = await world.call(handler, {"ok": True})  # after the first one ended
            return handler.states_built, outcome.ack
        finally:
            await handler.close()

    states, acked = run(go(), timeout_s=BOUND_S)
    assert survivors(caplog) == []
    assert acked and states == 2  # the cancelled state was replaced


# -- C loops the hook cannot see ------------------------------------------------------------

C_LOOPS = {
    "string.rep of an empty string": 'string.rep("", 2^31 - 1)',
    "a plain find of a long needle": (
        'local s = string.rep("a", 2^20) string.find(s, s:sub(2) .. "b", 1, true)'
    ),
    "collectgarbage in a loop": "local t = {} for i = 1, 5e4 do t[i] = {} end "
    "while true do collectgarbage() end",
    "table.sort in a loop": "local t = {} for i = 1, 1e5 do t[i] = i end "
    "while true do table.sort(t) end",
    "table.insert at the front": "local t = {} for i = 1, 1e5 do t[i] = i end "
    "while true do table.insert(t, 1, 0) table.remove(t, 1) end",
}


@pytest.mark.parametrize("code", C_LOOPS.values(), ids=C_LOOPS.keys())
def test_c_loops_the_hook_cannot_see_are_charged(code: str) -> None:
    lua = f"return function() {code} return 'survived' end"
    with pytest.raises(LuaLimitError, match="stopped after 1,000,000 Lua instructions"):
        run(one_call(lua, limits=SMALL), timeout_s=BOUND_S)


def test_a_timeout_stops_a_loop_of_slow_instructions() -> None:
    # few instructions, each copying megabytes: cancellation is checked by time too
    lua = """
        return function(b)
            if b.ok then return true end
            local s = string.rep("x", 2 * 1024 * 1024)
            while true do local t = s .. s .. s .. s end  -- one instruction: 8 MB copied
        end
    """

    async def go() -> bool:
        limits = LuaLimits(instructions=10**12, memory_mb=1024)
        # no giving up on the thread: the call itself must stop
        handler = LuaHandler(program(lua, limits=limits), stop_grace_s=BOUND_S)
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await world.call(handler, {})
            _, outcome = await world.call(handler, {"ok": True})  # once the first stopped
            return outcome.ack
        finally:
            await handler.close()

    assert run(go(), timeout_s=BOUND_S)


# -- memory: one ceiling per call -------------------------------------------------------------


def test_module_calls_do_not_lift_the_memory_ceiling() -> None:
    # each decode allocates from Python (~20x its text); the ceiling moved up after each
    lua = """
        local json = require("json")
        return function()
            local text = "[" .. string.rep("[],", 10000) .. "[]]"
            local keep = {}
            for i = 1, 100 do keep[i] = json.decode(text) end
            return collectgarbage("count") / 1024
        end
    """
    with pytest.raises(LuaLimitError, match="more than its memory limit of 16 MB"):
        run(one_call(lua, modules=["json"], limits=ROOMY), timeout_s=BOUND_S)


def test_json_decode_refuses_text_larger_than_the_memory_left() -> None:
    # the body came in before the call: the text itself is not the handler's allocation
    lua = """
        local json = require("json")
        return function(body)
            local value, err = json.decode(body.text)
            return {value = value, err = err}
        end
    """
    text = "1" * (17 * 1024 * 1024)
    result, _ = run(
        one_call(lua, {"text": text}, modules=["json"], limits=ROOMY), timeout_s=BOUND_S
    )
    assert "value" not in result
    assert result["err"].startswith("json.decode: the text (17,825,792 bytes) is larger than")
    assert "limits.memory_mb" in result["err"]


# -- values out of Lua: bounded however much a table repeats itself -------------------------------

#: 2^40 nodes once expanded, a few KB in Lua
GRAPH = "local t = {} for i = 1, 40 do t = {t, t} end"
TINY = LuaLimits(instructions=10**9, memory_mb=1)  # copies of at most 16,384 values
TOO_MANY = re.escape("expands to more than 16,384 values (one per 64 bytes of limits.memory_mb)")


def test_a_returned_table_graph_is_refused_quickly() -> None:
    lua = f"return function() {GRAPH} return t end"
    with pytest.raises(LuaLimitError, match="result: the value " + TOO_MANY):
        run(one_call(lua, limits=TINY), timeout_s=BOUND_S)


def test_a_repeated_long_string_is_counted_in_bytes() -> None:
    lua = """
        return function()
            local s, t = string.rep("x", 100000), {}
            for i = 1, 11 do t[i] = s end  -- 100 KB in Lua, 1.1 MB copied
            return t
        end
    """
    with pytest.raises(LuaLimitError, match=r"expands to more than 1,048,576 bytes of strings"):
        run(one_call(lua, limits=TINY), timeout_s=BOUND_S)


MODULE_COPIES = {
    "json.encode": ("pcall(json.encode, t)", "json.encode: value"),
    "queue.publish": ("pcall(queue.publish, 'app:out', t)", "queue.publish: data"),
    "logger fields": ("logger.info('graph', {t = t})", "logger: fields"),
}


@pytest.mark.parametrize(("use", "where"), MODULE_COPIES.values(), ids=MODULE_COPIES.keys())
def test_a_table_graph_given_to_a_module_stops_the_call(
    use: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wippy_queue.lua")
    lua = f"""
        local json, queue, logger = require("json"), require("queue"), require("logger")
        return function() {GRAPH} {use} print("survived") end
    """
    with pytest.raises(LuaLimitError, match=f"stopped: {where}: the value {TOO_MANY}"):
        run(one_call(lua, modules=["json", "queue", "logger"], limits=TINY), timeout_s=BOUND_S)
    assert "survived" not in survivors(caplog)


def test_a_table_graph_raised_as_an_error_is_not_expanded() -> None:
    lua = f"return function() {GRAPH} error(t) end"
    with pytest.raises(LuaHandlerError, match=r"^a table \(too large to show\)"):
        run(one_call(lua, limits=TINY), timeout_s=BOUND_S)


def test_copies_are_charged_to_the_instruction_budget() -> None:
    # each encode is a few instructions of Lua but 10,000 values of Python work
    lua = """
        local json = require("json")
        return function()
            local t = {} for i = 1, 10000 do t[i] = i end
            while true do json.encode(t) end
        end
    """
    limits = LuaLimits(instructions=10_000_000, memory_mb=16)
    with pytest.raises(LuaLimitError, match="stopped after 10,000,000 Lua instructions"):
        run(one_call(lua, modules=["json"], limits=limits), timeout_s=BOUND_S)


# -- a call that cannot be stopped: the consumer keeps its capacity ------------------------------

STUCK_SHIM = """
return function(host)
  return {wait = function() host.wait() end}
end
"""


def test_a_call_that_does_not_stop_gives_up_its_thread(caplog: pytest.LogCaptureFixture) -> None:
    # stands for any work the hook cannot reach: a module function deaf to cancellation
    release = threading.Event()

    def host(h: Host) -> HostFunctions:
        return {"wait": h.guard("stuck.wait", lambda: release.wait(BOUND_S))}

    lua = 'local stuck = require("stuck") return function(b) if b.stuck then stuck.wait() end end'

    async def go() -> Any:
        modules = {**BUILTIN_MODULES, "stuck": ModuleSpec(STUCK_SHIM, host)}
        handler = LuaHandler(program(lua, modules=["stuck"]), modules=modules, stop_grace_s=0.05)
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await world.call(handler, {"stuck": True})
            # served by the thread that replaces the stuck one, after the grace
            _, outcome = await world.call(handler, {})
            return outcome.ack, release.is_set()
        finally:
            release.set()
            await handler.close()

    caplog.set_level(logging.WARNING, logger="wippy_queue.functions.threads")
    acked, released = run(go(), timeout_s=BOUND_S)
    assert acked and not released
    assert any("outlived its caller" in r.getMessage() for r in caplog.records)
