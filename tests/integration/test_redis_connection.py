"""A Redis driver whose broker goes away: the state says so, consumers pause and resume,
and a broker that stays away fails the driver as its restart policy says."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import services
import yaml
from conftest import handler_plugins, write
from proxy import Proxy

from wippy_queue import Runtime, ServiceState

pytestmark = pytest.mark.services

WAIT_S = 10.0


@pytest.fixture
def stream() -> Iterator[str]:
    host, port = services.redis_address()
    services.require("Redis", host, port, module="redis")
    name = f"wq-conn-{uuid.uuid4().hex[:10]}"
    yield name
    services.redis_delete_prefix(name)


def app(tmp_path: Path, stream: str, port: int, handler: Any, max_attempts: int = 0) -> Runtime:
    restart = {"initial_delay": 0.05, "max_delay": 0.2, "jitter": 0, "max_attempts": max_attempts}
    entries = [
        {
            "name": "redis",
            "kind": "queue.driver.redis",
            "url": f"redis://127.0.0.1:{port}/0",
            "lifecycle": {"auto_start": True, "restart": restart},
        },
        {"name": "jobs", "kind": "queue.queue", "driver": "redis", "queue_name": stream},
        {"name": "fn", "kind": "function.python", "source": "builtins:print"},
        {
            "name": "worker",
            "kind": "queue.consumer",
            "queue": "jobs",
            "func": "fn",
            "lifecycle": {"auto_start": True},
        },
    ]
    path = write(tmp_path / "app.yaml", yaml.safe_dump({"namespace": "c", "entries": entries}))
    return Runtime.load(path, plugins=handler_plugins(handler))


async def until(check: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():
            await asyncio.sleep(0.02)


async def test_the_broker_away_shows_reconnecting_and_work_resumes(
    tmp_path: Path, stream: str
) -> None:
    proxy = Proxy(*services.redis_address())
    await proxy.up()
    seen: list[int] = []

    async def handler(data: Any) -> bool:
        seen.append(data["n"])
        return True

    try:
        async with app(tmp_path, stream, proxy.port, handler) as runtime:
            await runtime.publish("c:jobs", {"n": 1})
            await until(lambda: seen == [1])
            await proxy.down()
            await until(lambda: runtime.state("c:redis") is ServiceState.RECONNECTING)
            publishing = asyncio.create_task(runtime.publish("c:jobs", {"n": 2}))
            done, _ = await asyncio.wait([publishing], timeout=0.2)
            assert not done, "a publish waits for the broker to come back"
            await proxy.up()
            await publishing
            await until(lambda: seen == [1, 2])
            # (the publish connection may be back a moment before the state says so)
            await until(lambda: runtime.state("c:redis") is ServiceState.RUNNING)
    finally:
        await proxy.down()


async def test_a_broker_that_stays_away_fails_the_driver_after_max_attempts(
    tmp_path: Path, stream: str
) -> None:
    proxy = Proxy(*services.redis_address())
    await proxy.up()

    async def handler(data: Any) -> bool:
        return True

    runtime = app(tmp_path, stream, proxy.port, handler, max_attempts=3)
    try:
        async with runtime:
            await proxy.down()
            await until(
                lambda: (
                    runtime.state("c:redis")
                    not in (ServiceState.RUNNING, ServiceState.RECONNECTING)
                )
            )
            unit = runtime.supervisor.get("c:redis")
            assert "unreachable after 3 attempts" in (unit.last_error or "")
    finally:
        await proxy.down()
