"""A queue's ``ttl``: a message not handled in time never reaches a handler."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import backends
import pytest
import yaml
from conftest import handler_plugins, write

from wippy_queue import Runtime

pytestmark = pytest.mark.usefixtures("backend")

WAIT_S = 5.0


def app(tmp_path: Path, handler: Any, *, dead_letter: bool, auto_start: bool = False) -> Runtime:
    backend = backends.current()
    key = backend.kind.removeprefix("queue.driver.")
    # a failed attempt comes back at once: its expiry, not a retry delay, decides
    jobs = backend.queue_entry("jobs", driver_options={key: {"ttl": "200ms"}}, retry_delay=0)
    if dead_letter:
        jobs["dead_letter"] = {"queue": "dead", "max_attempts": 3}
    entries = [
        backend.driver_entry("mem"),
        jobs,
        backend.queue_entry("dead"),
        {"name": "fn", "kind": "function.python", "source": "builtins:print"},
        {
            "name": "worker",
            "kind": "queue.consumer",
            "queue": "jobs",
            "func": "fn",
            "lifecycle": {"auto_start": auto_start},
        },
    ]
    path = write(tmp_path / "app.yaml", yaml.safe_dump({"namespace": "t", "entries": entries}))
    return Runtime.load(path, plugins=handler_plugins(handler))


async def test_an_expired_message_is_dead_lettered_and_never_handled(tmp_path: Path) -> None:
    handled: list[Any] = []

    async def handler(data: Any) -> bool:
        handled.append(data)
        return True

    async with app(tmp_path, handler, dead_letter=True) as runtime:
        stale = await runtime.publish("t:jobs", {"n": "stale"})
        await asyncio.sleep(0.3)  # past the 200 ms ttl, with no consumer running
        fresh = await runtime.publish("t:jobs", {"n": "fresh"})
        await runtime.start("t:worker")
        await runtime.join("t:jobs", timeout=WAIT_S)
        (dead,) = await backends.waiting(runtime, "t:dead", expect=1)

    assert handled == [{"n": "fresh"}]
    assert dead.id == stale and dead.id != fresh
    assert dead.headers["x_dead_letter_reason"] == "expired"
    assert "x_expires_at" not in dead.headers  # the dead-letter queue has no ttl


async def test_without_a_dead_letter_queue_it_is_dropped_and_counted(tmp_path: Path) -> None:
    handled: list[Any] = []

    async def handler(data: Any) -> bool:
        handled.append(data)
        return True

    async with app(tmp_path, handler, dead_letter=False) as runtime:
        await runtime.publish("t:jobs", {"n": 1})
        await asyncio.sleep(0.3)
        await runtime.start("t:worker")
        await runtime.join("t:jobs", timeout=WAIT_S)
        info = await runtime.info("t:jobs")
        assert (info.expired, info.message_count) == (1, 0)
    assert handled == []


async def test_a_requeue_does_not_make_a_message_young_again(tmp_path: Path) -> None:
    attempts: list[int] = []

    async def handler(data: Any) -> bool:
        from wippy_queue import current_message

        attempts.append(current_message().attempt)
        await asyncio.sleep(0.15)
        return False  # nack: requeued with its first expiry

    async with app(tmp_path, handler, dead_letter=True, auto_start=True) as runtime:
        await runtime.publish("t:jobs", {"n": 1})
        await runtime.join("t:jobs", timeout=WAIT_S)
        (dead,) = await backends.waiting(runtime, "t:dead", expect=1)
    assert attempts[:1] == [1] and len(attempts) < 3  # expired before its third attempt
    assert dead.headers["x_dead_letter_reason"] == "expired"
