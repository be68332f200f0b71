"""Concurrent workers: each runs its own Lua state, in parallel, never sharing one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from lua_support import World, body_of, drive, lua_handler, run, write_app

from wippy_queue import Runtime
from wippy_queue.functions.lua.host import Host
from wippy_queue.functions.lua.modules import HostFunctions, ModuleSpec

BARRIER_SHIM = """
return function(host)
  return {wait = function() local r = host.wait() return r[1], r[2] end}
end
"""


def barrier_module(parties: int) -> ModuleSpec:
    """A test-only module: ``barrier.wait()`` returns once ``parties`` Lua calls wait.

    If two calls shared a Lua state (or ran one after the other) it would time out.
    """
    barrier = threading.Barrier(parties, timeout=10)

    def host(h: Host) -> HostFunctions:
        def wait() -> tuple[bool, str | None]:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return False, "barrier broken: the calls did not run at the same time"
            return True, None

        return {"wait": h.guard("barrier.wait", wait)}

    return ModuleSpec(BARRIER_SHIM, host)


STATEFUL = """
    local barrier = require("barrier")
    local anchor = {}                 -- lives as long as this Lua state
    local state_id = tostring(anchor)
    return function(body)
        calls = (calls or 0) + 1      -- a global: per state
        local ok, err = barrier.wait()
        return {state = state_id, calls = calls, ok = ok, err = err}
    end
"""


def test_each_concurrent_worker_runs_in_its_own_state() -> None:
    async def go() -> list[Any]:
        handler = lua_handler(
            STATEFUL, modules=["barrier"], extra_modules={"barrier": barrier_module(4)}
        )
        world = await World().start()
        await handler.start(concurrency=4)
        try:
            calls = [world.call(handler, {"n": n}) for n in range(4)]
            results = [r for r, _ in await asyncio.gather(*calls)]
            assert handler.states_built == 4
            return results
        finally:
            await handler.close()

    results = run(go())
    assert all(r["ok"] is True for r in results), results
    assert len({r["state"] for r in results}) == 4
    assert [r["calls"] for r in results] == [1, 1, 1, 1]


def test_a_smaller_pool_serialises_calls_on_fewer_states() -> None:
    lua = """
        local anchor = {}
        local state_id = tostring(anchor)
        return function(body)
            calls = (calls or 0) + 1
            return {state = state_id, calls = calls}
        end
    """

    async def go() -> list[Any]:
        handler = lua_handler(lua, pool=1)
        world = await World().start()
        await handler.start(concurrency=4)
        try:
            results = await asyncio.gather(*(world.call(handler, {}) for _ in range(6)))
            assert handler.states_built == 1
            return [r for r, _ in results]
        finally:
            await handler.close()

    results = run(go())
    assert len({r["state"] for r in results}) == 1
    assert sorted(r["calls"] for r in results) == [1, 2, 3, 4, 5, 6]


def test_a_consumer_with_four_workers_uses_four_states_at_most(tmp_path: Path) -> None:
    lua = """
        local queue = require("queue")
        local anchor = {}
        local state_id = tostring(anchor)
        return function(body)
            seen = (seen or 0) + 1
            queue.publish("app:out", {state = state_id, seen = seen, n = body.n})
        end
    """
    root = write_app(
        tmp_path, lua, handler={"modules": ["queue"]}, consumer={"concurrency": 4, "prefetch": 20}
    )
    result = run(drive(root, [{"n": n} for n in range(40)]))
    bodies = [body_of(m) for m in result["out"]]
    assert sorted(b["n"] for b in bodies) == list(range(40))
    per_state: dict[str, list[int]] = {}
    for b in bodies:
        per_state.setdefault(b["state"], []).append(b["seen"])
    assert 1 <= len(per_state) <= 4
    for seen in per_state.values():  # each state counted only its own calls
        assert sorted(seen) == list(range(1, len(seen) + 1))
    assert result["dead"] == []


def test_a_timeout_counts_from_when_a_call_starts_not_from_when_it_waits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One Lua state for two workers: the quick message waits in the pool behind the
    slow one for longer than the consumer's timeout, then runs and is acked; only
    the slow one, which ran past the timeout, is stopped (by itself: its thread is
    not given up on) and dead-lettered."""
    lua = """
        local time = require("time")
        local queue = require("queue")
        return function(body)
            if body.slow then time.sleep(30) end  -- woken early when it times out
            queue.publish("app:out", {n = body.n})
        end
    """
    root = write_app(
        tmp_path,
        lua,
        handler={"modules": ["time", "queue"], "pool": {"type": "static", "size": 1}},
        consumer={"concurrency": 2, "prefetch": 4, "timeout": 0.5},
    )
    result = run(drive(root, [{"n": 1, "slow": True}, {"n": 2}]))
    assert [body_of(m)["n"] for m in result["out"]] == [2]
    (dead,) = result["dead"]
    assert body_of(dead)["n"] == 1
    assert "within 0.5s" in str(dead.headers)
    assert not [r for r in caplog.records if "outlived its caller" in r.getMessage()]


def test_a_stop_gives_back_the_calls_waiting_for_a_state_untried(tmp_path: Path) -> None:
    """As for a plain Python function: the calls queued behind the running one go back
    at once, untried, while it finishes; after a restart each message runs once."""
    lua = """
        local time = require("time")
        local queue = require("queue")
        return function(body)
            if body.n == 0 then time.sleep(4) end  -- still running when the stop comes
            local msg = queue.message()
            queue.publish("app:out", {n = body.n, attempt = msg:header("attempts")})
        end
    """
    root = write_app(
        tmp_path,
        lua,
        handler={"modules": ["time", "queue"]},
        consumer={"concurrency": 1, "prefetch": 5},
    )

    async def go() -> list[Any]:
        runtime = Runtime.load(root)
        async with runtime:
            for n in range(5):
                await runtime.publish("app:jobs", {"n": n})

            async def counts() -> tuple[int, int]:
                info = await runtime.info("app:jobs")
                return info.ready, info.in_flight

            async with asyncio.timeout(3.5):  # all five taken: one running, four queued
                while await counts() != (0, 5):
                    await asyncio.sleep(0.005)
            stopping = asyncio.create_task(runtime.stop("app:worker"))
            async with asyncio.timeout(3.5):  # the four are back while the first runs
                while await counts() != (4, 1):
                    await asyncio.sleep(0.005)
            await stopping
            await runtime.start("app:worker")
            await runtime.join("app:jobs", timeout=10)
            return [body_of(m) for m in runtime.drivers["app:mem"].dead_letters("out")]

    bodies = run(go())
    assert sorted((b["n"], b["attempt"]) for b in bodies) == [(n, 1) for n in range(5)]
