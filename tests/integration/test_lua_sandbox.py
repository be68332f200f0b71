"""The sandbox: what handler code cannot reach, and runaway handlers being stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lua_support import World, drive, lua_handler, one_call, run, write_app

from wippy_queue.errors import ConfigError
from wippy_queue.functions.lua.config import LuaLimits
from wippy_queue.runtime import Runtime

FORBIDDEN = [
    "os",
    "io",
    "debug",
    "package",
    "dofile",
    "loadfile",
    "python",
    "getfenv",
    "setfenv",
    "module",
    "newproxy",
    "gcinfo",
    "string.dump",
    "debug.sethook",
    "package.loadlib",
]


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_global_is_absent(name: str) -> None:
    root, _, field = name.partition(".")
    expr = f"{root} and {root}.{field}" if field else name
    result, _ = run(one_call(f"return function() return type({expr}) end"))
    assert result == "nil"


def test_nothing_reachable_is_a_python_object() -> None:
    lua = """
        local json, logger, queue, time = require("json"), require("logger"),
            require("queue"), require("time")
        local seen, found = {}, {}
        local function walk(t, path)
            if seen[t] then return end
            seen[t] = true
            for k, v in pairs(t) do
                local kind = type(v)
                if kind == "userdata" then found[#found + 1] = path .. "." .. tostring(k) end
                if kind == "table" then walk(v, path .. "." .. tostring(k)) end
            end
        end
        walk(_G, "_G")
        for name, m in pairs({json = json, logger = logger, queue = queue, time = time}) do
            walk(m, name)
        end
        return function()
            walk(queue.message(), "message")
            return {found = table.concat(found, ", "), string_mt = getmetatable("")}
        end
    """
    result, _ = run(one_call(lua, modules=["json", "logger", "queue", "time"]))
    assert result == {"found": "", "string_mt": "string"}


@pytest.mark.parametrize("module", ["os", "io", "debug", "python", "package", "json", "lupa"])
def test_require_outside_the_listed_modules_fails(module: str) -> None:
    lua = f"""
        return function()
            local ok, err = pcall(require, "{module}")
            return {{ok = ok, err = err}}
        end
    """
    result, _ = run(one_call(lua, modules=["logger"]))
    assert result["ok"] is False
    assert f"module '{module}' is not available to test:handler" in result["err"]
    assert "it may require: logger" in result["err"]


def test_bytecode_cannot_be_loaded_but_source_can() -> None:
    lua = """
        return function()
            local f1, e1 = loadstring("\\27Lua\\81\\0\\1\\4")
            local pieces = {"\\27Lua", "\\81"}
            local f2, e2 = load(function() return table.remove(pieces, 1) end)
            local f3 = loadstring("return os, x")
            x = 42
            local os_value, x_value = f3()
            return {e1 = e1, e2 = e2, f1 = f1 == nil, os = os_value == nil, x = x_value}
        end
    """
    result, _ = run(one_call(lua))
    assert result == {
        "e1": "precompiled (binary) chunks cannot be loaded",
        "e2": "precompiled (binary) chunks cannot be loaded",
        "f1": True,
        "os": True,
        "x": 42,
    }


def test_collectgarbage_keeps_only_harmless_options() -> None:
    lua = """
        return function()
            local n = collectgarbage("count")
            local ok, err = pcall(collectgarbage, "stop")
            return {counted = type(n) == "number", ok = ok, err = err}
        end
    """
    result, _ = run(one_call(lua))
    assert result["counted"] is True and result["ok"] is False
    assert 'collectgarbage("stop") is not available in the sandbox' in result["err"]


# -- runaway handlers ----------------------------------------------------------------------

SMALL = LuaLimits(instructions=1_000_000, memory_mb=16)

RUNAWAYS = {
    "loop": "while true do end",
    "pcall swallows errors": "while true do pcall(function() while true do end end) end",
    "coroutine": "coroutine.wrap(function() while true do end end)()",
    "error handler": "xpcall(function() error('x') end, function() while true do end end)",
    "recursion": "local function f(n) return f(n + 1) + 1 end f(1)",
}


@pytest.mark.parametrize("body", RUNAWAYS.values(), ids=RUNAWAYS.keys())
def test_runaway_cpu_is_stopped(body: str) -> None:
    lua = f"return function(b) if b.ok then return true end {body} end"

    async def go() -> Any:
        handler = lua_handler(lua, limits=SMALL)
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            stopped = None
            try:
                await world.call(handler, {})
            except Exception as err:
                stopped = err
            # the state was replaced: the same handler serves the next call
            _, outcome = await world.call(handler, {"ok": True})
            return stopped, handler.states_built, outcome.ack
        finally:
            await handler.close()

    stopped, states, acked = run(go())
    assert stopped is not None
    text = str(stopped)
    assert "stopped after 1,000,000 Lua instructions" in text or "stack overflow" in text
    assert states == 2 if "instructions" in text else states >= 1
    assert acked


MEMORY_HOGS = {
    "table": "local t = {} for i = 1, 1e8 do t[i] = {i} end",
    "string": "local s = 'x' for i = 1, 40 do s = s .. s end",
    "rep": "return string.rep('x', 1e9)",
}


@pytest.mark.parametrize("body", MEMORY_HOGS.values(), ids=MEMORY_HOGS.keys())
def test_runaway_memory_is_stopped(body: str) -> None:
    lua = f"return function() {body} end"
    with pytest.raises(Exception, match="memory limit of 16 MB"):
        run(one_call(lua, limits=LuaLimits(instructions=10**9, memory_mb=16)))


def test_runaways_are_nacked_and_the_consumer_goes_on(tmp_path: Path) -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            if body.kind == "cpu" then while true do end end
            if body.kind == "memory" then local t = {} for i = 1, 1e9 do t[i] = {} end end
            queue.publish("app:out", {kind = body.kind})
        end
    """
    limits = {"instructions": 2_000_000, "memory_mb": 16}
    root = write_app(tmp_path, lua, handler={"modules": ["queue"], "limits": limits})
    result = run(drive(root, [{"kind": "cpu"}, {"kind": "memory"}, {"kind": "fine"}]))
    assert [m.body for m in result["out"]] == [b'{"kind":"fine"}']
    reasons = {m.headers["x_dead_letter_error"] for m in result["dead"]}
    assert len(reasons) == 2
    assert any("stopped after 2,000,000 Lua instructions" in r for r in reasons)
    assert any("memory limit of 16 MB" in r for r in reasons)


def test_consumer_timeout_stops_a_long_lua_call(tmp_path: Path) -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            if body.spin then while true do end end
            queue.publish("app:out", {n = body.n})
        end
    """
    root = write_app(
        tmp_path,
        lua,
        handler={"modules": ["queue"], "limits": {"instructions": 10**12}},
        consumer={"timeout": "200ms"},
    )
    result = run(drive(root, [{"spin": True}, {"n": 2}]))
    assert [m.body for m in result["out"]] == [b'{"n":2}']
    [dead] = result["dead"]
    assert dead.headers["x_dead_letter_reason"] == "timeout"


def test_runaway_top_level_code_fails_the_consumer_start(tmp_path: Path) -> None:
    root = write_app(
        tmp_path,
        "while true do end\nreturn function() end\n",
        handler={"limits": {"instructions": 100_000}},
    )

    # refused when it loads (validate says so), as a start would refuse it
    with pytest.raises(ConfigError, match="stopped after 100,000 Lua instructions"):
        Runtime.load(root)
