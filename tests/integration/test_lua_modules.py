"""The Lua modules: json, logger, queue (publish, message), time."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from lua_support import World, lua_handler, one_call, run

from wippy_queue.errors import PermissionDenied
from wippy_queue.queue import context
from wippy_queue.queue.message import Message
from wippy_queue.queue.queue import Queue
from wippy_queue.runtime import Runtime

# -- json ------------------------------------------------------------------------------


def test_json_encode_is_compact_sorted_and_keeps_arrays_and_objects() -> None:
    lua = """
        local json = require("json")
        return function(body)
            return {
                plain = json.encode({b = 1, a = {1, 2, {x = true}}, s = "é"}),
                empty_object = json.encode({}),
                empty_array = json.encode(json.decode("[]")),
                scalar = json.encode("x"),
                null = json.encode(nil),
            }
        end
    """
    result, _ = run(one_call(lua, modules=["json"]))
    assert result == {
        "plain": '{"a":[1,2,{"x":true}],"b":1,"s":"é"}',
        "empty_object": "{}",
        "empty_array": "[]",
        "scalar": '"x"',
        "null": "null",
    }


def test_json_encode_of_a_non_json_value_returns_nil_and_err() -> None:
    lua = """
        local json = require("json")
        return function(body)
            local out, err = json.encode({f = function() end})
            local out2, err2 = json.encode({1, 2, x = 3})
            return {out = out, err = err, out2 = out2, err2 = err2}
        end
    """
    result, _ = run(one_call(lua, modules=["json"]))
    assert "out" not in result and "out2" not in result
    assert result["err"] == "json.encode: value.f: a function cannot cross as JSON"
    assert "mixing array items and named keys" in result["err2"]


def test_json_decode_parses_strings_and_returns_tables_as_they_are() -> None:
    lua = """
        local json = require("json")
        return function(body)
            local decoded = json.decode('{"a": [1, 2.5, "x", true], "b": {"c": null}}')
            local same = json.decode(body) == body
            local bad, err = json.decode("{nope")
            local num, err2 = json.decode(5)
            return {decoded = decoded, same = same, bad = bad, err = err, err2 = err2}
        end
    """
    result, _ = run(one_call(lua, {"k": 1}, modules=["json"]))
    assert result["decoded"] == {"a": [1, 2.5, "x", True], "b": {}}
    assert result["same"] is True
    assert "bad" not in result
    assert result["err"].startswith("json.decode: not valid JSON")
    assert result["err2"] == "json.decode: expected a JSON string, got a number"


# -- logger ----------------------------------------------------------------------------


def test_logger_levels_and_fields_carry_the_call_context(caplog: pytest.LogCaptureFixture) -> None:
    lua = """
        local logger = require("logger")
        return function(body)
            logger.debug("d", {n = 1})
            logger.info("i", {task = {id = "t-1"}})
            logger:warn("w")
            logger:error("e", {actor_id = "forged", f = function() end})
            print("printed", 2)
        end
    """
    caplog.set_level(logging.DEBUG, logger="wippy_queue.lua")
    run(one_call(lua, modules=["logger"]))
    records = [r for r in caplog.records if r.name == "wippy_queue.lua.test:handler"]
    levels = [(r.levelno, r.getMessage()) for r in records]
    assert levels == [
        (logging.DEBUG, "d"),
        (logging.INFO, "i"),
        (logging.WARNING, "w"),
        (logging.ERROR, "e"),
        (logging.INFO, "printed\t2"),
    ]
    fields: list[dict[str, Any]] = [r.fields for r in records]  # type: ignore[attr-defined]
    for f in fields:
        assert f["consumer"] == "app:worker"
        assert f["actor_id"] == "tester"
        assert f["function"] == "test:handler"
        assert isinstance(f["message_id"], str) and len(f["message_id"]) == 36
    assert fields[0]["n"] == 1
    assert fields[1]["task"] == {"id": "t-1"}
    assert fields[3]["f"] == "<a function cannot cross as JSON>"
    assert fields[3]["actor_id"] == "tester"  # a handler cannot fake the runtime's fields


# -- queue.publish ---------------------------------------------------------------------

PUBLISH = """
    local queue = require("queue")
    return function(body)
        local ok, err = queue.publish(body.queue, body.data, body.headers)
        return {ok = ok, err = err}
    end
"""


def _publish(world: World, body: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        handler = lua_handler(PUBLISH, modules=["queue"])
        await world.start()
        await handler.start(concurrency=1)
        try:
            result, _ = await world.call(handler, body)
        finally:
            await handler.close()
        return result  # type: ignore[no-any-return]

    return run(go())


def test_publish_returns_true_and_enqueues_under_the_call_context() -> None:
    seen: list[tuple[str | None, str]] = []

    class Watch:
        async def before_publish(
            self, ctx: context.CallContext | None, queue: Queue, message: Message
        ) -> None:
            assert ctx is not None and ctx.actor is not None
            seen.append((ctx.actor.id, queue.id))

    world = World(interceptors=[Watch()])
    body = {"queue": "app:out", "data": {"id": "t-1", "n": [1, 2]}, "headers": {"priority": 5}}
    assert _publish(world, body) == {"ok": True}
    [message] = world.messages("app:out")
    assert world.bodies("app:out") == [{"id": "t-1", "n": [1, 2]}]
    assert message.headers["priority"] == 5
    assert seen == [("tester", "app:out")]


class Refuse:
    async def before_publish(
        self, ctx: context.CallContext | None, queue: Queue, message: Message
    ) -> None:
        actor = ctx.actor.id if ctx and ctx.actor else None
        raise PermissionDenied("queue.publish.queue", queue.id, actor, "no rule allows it")


def test_publish_without_permission_returns_nil_and_err() -> None:
    world = World(interceptors=[Refuse()])
    result = _publish(world, {"queue": "app:out", "data": {"x": 1}})
    assert "ok" not in result
    assert result["err"] == (
        "permission denied: actor 'tester' may not queue.publish.queue on 'app:out' "
        "(no rule allows it)"
    )
    assert world.messages("app:out") == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"queue": "app:nowhere", "data": {"x": 1}}, "no queue 'app:nowhere'"),
        ({"queue": "app:out", "data": {}}, "refusing to publish empty data"),
        ({"queue": "app:out", "data": {"x": 1}, "headers": {"x_admin": True}}, "reserved"),
        ({"queue": "app:out", "data": {"x": 1}, "headers": [1]}, "headers must be a table"),
        ({"queue": 5, "data": {"x": 1}}, "registry ID (a string)"),
    ],
)
def test_publish_refusals_come_back_as_nil_and_err(body: dict[str, Any], expected: str) -> None:
    world = World()
    result = _publish(world, body)
    assert "ok" not in result and expected in result["err"]
    assert world.messages("app:out") == []


def test_publishing_a_non_json_value_is_a_clear_error() -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            return {queue.publish("app:out", {f = coroutine.create(function() end)})}
        end
    """
    result, _ = run(one_call(lua, modules=["queue"]))
    assert result == [None, "queue.publish: data.f: a coroutine cannot cross as JSON"]


# -- queue.message ---------------------------------------------------------------------


def test_message_gives_id_headers_and_single_shot_settling() -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            local msg, err = queue.message()
            local acked, ack_err = msg:ack()
            local again, again_err = msg.ack()
            local nacked, nack_err = msg:nack("late")
            local headers = msg:headers()
            return {
                id = msg:id(), prio = msg:header("priority"), missing = msg:header("nope"),
                headers = headers, acked = acked, again = again, again_err = again_err,
                nack_err = nack_err,
            }, "ignored"
        end
    """
    result, outcome = run(one_call_headers(lua))
    assert len(result["id"]) == 36 and result["prio"] == "high"
    assert "missing" not in result
    assert result["headers"]["priority"] == "high" and "timestamp" in result["headers"]
    assert result["acked"] is True and "again" not in result
    assert "already acked" in result["again_err"] and "already acked" in result["nack_err"]
    assert outcome.ack


def one_call_headers(lua: str) -> Any:
    async def go() -> Any:
        handler = lua_handler(lua, modules=["queue"])
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            return await world.call(handler, {"a": 1}, headers={"priority": "high"})
        finally:
            await handler.close()

    return go()


def test_message_nack_settles_even_if_the_handler_then_returns_a_value() -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            local msg = queue.message()
            return {msg:nack("not now")}
        end
    """
    result, outcome = run(one_call_headers(lua))
    assert result == [True]
    assert not outcome.ack and outcome.error == "not now"


def test_message_is_released_when_the_handler_returns() -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            if body.first then kept = queue.message(); return true end
            local id, err = kept:id()
            local ok, ack_err = kept:ack()
            return {id = id, err = err, ack_err = ack_err}
        end
    """

    async def go() -> Any:
        handler = lua_handler(lua, modules=["queue"])
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            await world.call(handler, {"first": True})
            return await world.call(handler, {"first": False})
        finally:
            await handler.close()

    result, _ = run(go())
    assert "id" not in result
    assert "finished handler call" in result["err"] and "finished handler call" in result["ack_err"]


def test_message_outside_a_consumer_call_is_nil_and_err() -> None:
    lua = """
        local queue = require("queue")
        local msg, err = queue.message()
        local at_load = err
        return function(body) return {at_load = at_load} end
    """
    result, _ = run(one_call(lua, modules=["queue"]))
    assert result == {"at_load": "queue.message() is only available inside a consumer's handler"}


# -- time ------------------------------------------------------------------------------


def test_time_now_and_sleep() -> None:
    lua = """
        local time = require("time")
        return function(body)
            local t0 = time.now()
            time.sleep(0.01)
            time.sleep("10ms")
            local ok, err = pcall(time.sleep, "soon")
            return {t0 = t0, waited = time.now() - t0, ok = ok, err = err}
        end
    """
    before = time.time()
    result, _ = run(one_call(lua, modules=["time"]))
    assert before - 1 <= result["t0"] <= time.time()
    assert result["waited"] >= 0.02
    assert result["ok"] is False and "'soon' is not a duration" in result["err"]


class Signal:
    """A publish interceptor that sets an event: the handler has reached that line."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()

    async def before_publish(
        self, ctx: context.CallContext | None, queue: Queue, message: Message
    ) -> None:
        self.reached.set()


def test_sleep_blocks_only_its_own_worker_and_wakes_on_cancel() -> None:
    lua = """
        local time = require("time")
        local queue = require("queue")
        return function(body)
            if body.sleep then
                queue.publish("app:out", {sleeping = true})
                time.sleep(body.sleep)
            end
            return {done = body.n}
        end
    """

    async def go() -> None:
        signal = Signal()
        world = await World(interceptors=[signal]).start()
        handler = lua_handler(lua, modules=["time", "queue"])
        await handler.start(concurrency=2)
        try:
            sleeper = asyncio.create_task(world.call(handler, {"sleep": 60, "n": 1}))
            await signal.reached.wait()  # the first worker is about to sleep for a minute
            result, _ = await world.call(handler, {"n": 2})
            assert result == {"done": 2}
            assert not sleeper.done()
            sleeper.cancel()  # as a consumer timeout or stop does
            with pytest.raises(asyncio.CancelledError):
                await sleeper
            # the sleeping thread woke up and is free again: two more calls fit in the pool
            results = await asyncio.gather(
                world.call(handler, {"n": 3}), world.call(handler, {"n": 4})
            )
            assert [r for r, _ in results] == [{"done": 3}, {"done": 4}]
        finally:
            await handler.close()

    run(go())


SECURED_APP = """\
version: "1.0"
namespace: app
entries:
  - name: mem
    kind: queue.driver.memory
    lifecycle: {auto_start: true}
  - {name: jobs, kind: queue.queue, driver: mem}
  - {name: out, kind: queue.queue, driver: mem}
  - {name: secret, kind: queue.queue, driver: mem}
  - name: may_work
    kind: security.policy
    policy:
      actions: ["queue.consume", "queue.publish", "queue.publish.queue"]
      resources: ["*"]
      effect: allow
  - name: not_secret
    kind: security.policy
    policy:
      actions: queue.publish.queue
      resources: ["app:secret"]
      effect: deny
  - name: handler
    kind: function.lua
    source: file://handler.lua
    modules: [queue]
  - name: worker
    kind: queue.consumer
    queue: jobs
    func: handler
    lifecycle:
      auto_start: true
      security:
        actor: {id: worker-1}
        policies: [may_work, not_secret]
"""


def test_publish_runs_under_the_consumers_actor_and_policies(tmp_path: Path) -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            local ok, err = queue.publish("app:out", {to = "out"})
            local denied, why = queue.publish("app:secret", {to = "secret"})
            assert(queue.publish("app:out", {ok = ok, denied = denied == nil, why = why}))
        end
    """
    (tmp_path / "handler.lua").write_text(lua, encoding="utf-8")
    (tmp_path / "_index.yaml").write_text(SECURED_APP, encoding="utf-8")

    async def go() -> list[Any]:
        runtime = Runtime.load(tmp_path)
        async with runtime:
            await runtime.publish("app:jobs", {"n": 1})
            await runtime.join("app:jobs", timeout=10)
            driver = runtime.drivers["app:mem"]
            assert driver.dead_letters("secret") == []
            return [json.loads(m.body) for m in driver.dead_letters("out")]

    first, report = run(go())
    assert first == {"to": "out"}
    assert report["ok"] is True and report["denied"] is True
    assert (
        "permission denied: actor 'worker-1' may not queue.publish.queue on 'app:secret'"
        in (report["why"])
    )
