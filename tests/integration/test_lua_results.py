"""How a Lua handler's result settles its message, and bodies crossing without loss."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lua_support import World, body_of, drive, lua_handler, one_call, run, write_app

# -- result mapping (Wippy's docs: a value acks; nil, err / error() / false nack) ------------

ACKS = {
    "a value": "return {done = true}",
    "nothing": "return",
    "nil": "return nil",
    "nil, nil": "return nil, nil",
    "true": "return true",
    "a value and an error": "return 1, 'ignored'",
}


@pytest.mark.parametrize("body", ACKS.values(), ids=ACKS.keys())
def test_returned_values_ack(body: str) -> None:
    _, outcome = run(one_call(f"return function() {body} end"))
    assert outcome.ack


NACKS = {
    "nil, err": ("return nil, 'no such task'", "handler_error", "no such task"),
    "nil, error table": ("return nil, {code = 7}", "handler_error", '{"code": 7}'),
    "false": ("return false", "returned_false", "handler returned false"),
    "false, err": ("return false, 'why'", "returned_false", "handler returned false"),
}


@pytest.mark.parametrize(("body", "reason", "error"), NACKS.values(), ids=NACKS.keys())
def test_false_and_nil_err_nack(body: str, reason: str, error: str) -> None:
    _, outcome = run(one_call(f"return function() {body} end"))
    assert not outcome.ack
    assert (outcome.reason, outcome.error) == (reason, error)


def test_raised_error_nacks_with_lua_text_and_traceback_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lua = """
        local function check(task)
            if not task.id then error("task has no id") end
        end
        return function(body)
            check(body)
        end
    """
    root = write_app(tmp_path, lua)
    caplog.set_level(logging.ERROR, logger="wippy_queue")
    result = run(drive(root, [{"action": "x"}]))
    [dead] = result["dead"]
    assert dead.headers["x_dead_letter_reason"] == "handler_error"
    assert dead.headers["x_dead_letter_error"] == "LuaHandlerError: handler.lua:2: task has no id"
    [record] = [r for r in caplog.records if "handler failed" in r.getMessage()]
    trace = record.fields["traceback"]  # type: ignore[attr-defined]
    assert "LuaHandlerError: handler.lua:2: task has no id" in trace
    assert "Lua stack traceback:" in trace
    assert "handler.lua:2: in function 'check'" in trace and "handler.lua:5" in trace
    # the runtime's Python frames that ran the Lua handler say nothing about it
    assert "Traceback (most recent call last)" not in trace and "File " not in trace


def test_error_with_a_table_value_is_reported_as_json() -> None:
    with pytest.raises(Exception, match='"code": "E42"'):
        run(one_call("return function() error({code = 'E42'}) end"))


NOT_JSON = {
    "function": ("return {f = print}", "result.f: a function cannot cross as JSON"),
    "mixed table": ("return {1, 2, x = 3}", "result: a table mixing array items and named"),
    "NaN": ("return {n = 0/0}", "is not valid JSON"),
    "infinity": ("return {n = math.huge}", "the number inf is not valid JSON"),
    "sparse array": ("return {[1] = 1, [1000] = 2}", "a sparse array (2 items up to [1000])"),
    "cycle": ("local t = {} t.self = t return t", "nested deeper than 100 levels"),
    "binary string": ("return {s = '\\255\\254'}", "not valid UTF-8"),
}


@pytest.mark.parametrize(("body", "message"), NOT_JSON.values(), ids=NOT_JSON.keys())
def test_returning_a_non_json_value_nacks_with_a_clear_error(body: str, message: str) -> None:
    with pytest.raises(Exception) as info:
        run(one_call(f"return function() {body} end"))
    assert message in str(info.value)


def test_integers_a_double_cannot_hold_are_refused_rather_than_rounded() -> None:
    with pytest.raises(Exception, match=r"body\.id: the integer 9007199254740993 is not exactly"):
        run(one_call("return function(b) return b end", {"id": 2**53 + 1}))
    result, _ = run(one_call("return function(b) return b end", {"id": 2**60}))
    assert result == {"id": 2**60}


# -- bodies round-trip -----------------------------------------------------------------------

_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
BODIES = st.dictionaries(st.text(min_size=1, max_size=8), JSON_VALUES, min_size=1, max_size=6)

ROUND_TRIP = """
    local json = require("json")
    return function(body)
        return {
            same = body,
            via_json = json.decode(json.encode(body)),
            via_string = json.decode(json.encode(json.decode(json.encode(body)))),
        }
    end
"""


def _same(a: Any, b: Any) -> bool:
    """JSON equality; -0.0 == 0.0 and Lua 5.1 turns 2.0 into 2, which compare equal."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b) and type(a) in (type(b), int, float)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES)
def test_bodies_round_trip_through_lua_and_json(body: dict[str, Any]) -> None:
    async def go() -> Any:
        handler = lua_handler(ROUND_TRIP, modules=["json"])
        world = await World().start()
        await handler.start(concurrency=1)
        try:
            result, _ = await world.call(handler, body)
            return result
        finally:
            await handler.close()

    result = run(go())
    assert result == {"same": body, "via_json": body, "via_string": body}
    assert _same(result["same"], body)


def test_nulls_become_nil() -> None:
    body = {"a": None, "list": [1, None, 3], "tail": [1, None], "keep": 1}
    result, _ = run(one_call("return function(b) return b end", body))
    assert result == {"list": [1, None, 3], "tail": [1], "keep": 1}


def test_published_bodies_arrive_as_written(tmp_path: Path) -> None:
    lua = """
        local queue = require("queue")
        return function(body)
            assert(queue.publish("app:out", body, {kind = "copy", n = 1, ok = true}))
            assert(queue.publish("app:out", {
                nested = {list = {1, 2.5, "three", {four = 4}}, empty_object = {}},
                text = "ünïcødé ✓", flag = false,
            }))
        end
    """
    root = write_app(tmp_path, lua, handler={"modules": ["queue"]})
    body = {"id": "task-123", "items": [{"n": 1}, {"n": 2}], "empty": [], "obj": {}, "x": -0.5}
    result = run(drive(root, [body]))
    first, second = result["out"]
    assert body_of(first) == body
    assert {k: first.headers[k] for k in ("kind", "n", "ok")} == {
        "kind": "copy",
        "n": 1,
        "ok": True,
    }
    assert body_of(second) == {
        "nested": {"list": [1, 2.5, "three", {"four": 4}], "empty_object": {}},
        "text": "ünïcødé ✓",
        "flag": False,
    }
