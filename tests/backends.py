"""The drivers a runtime-level test runs on, switched by one fixture parameter.

A test of consumer or security behaviour builds its entries with ``driver_entry``
and ``queue_entry`` and reads queues with ``waiting``; the ``backend`` fixture
(``conftest.py``) runs it once per driver in ``BACKENDS``. Each run gets its own
queue names on the broker (brokers are shared by every test and process).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import services

from wippy_queue import Runtime
from wippy_queue.queue.driver import SubscribeSpec
from wippy_queue.queue.message import Message

#: every driver a runtime-level test runs on (brokers marked: they need a service)
BACKENDS = (
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.services),
    pytest.param("amqp", marks=pytest.mark.services),
    pytest.param("sqs", marks=pytest.mark.services),
)


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str
    #: the driver entry's own fields (a broker's url)
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: makes this test's broker-side queue names its own
    prefix: str = ""
    #: the broker-side queue names this test used (deleted after it, ``cleanup``)
    names: set[str] = field(default_factory=set)
    #: ``driver_options`` every queue entry gets (a short SQS lease)
    queue_options: Mapping[str, Any] = field(default_factory=dict)
    #: the broker-side names of the partitioned queues among ``names``
    partitioned: set[str] = field(default_factory=set)

    def driver_entry(self, name: str = "mem", **lifecycle: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": self.kind,
            **self.fields,
            "lifecycle": {"auto_start": True, **self.fields.get("lifecycle", {}), **lifecycle},
        }

    def queue_entry(self, name: str, driver: str = "mem", **fields: Any) -> dict[str, Any]:
        entry = {"name": name, "kind": "queue.queue", "driver": driver, **fields}
        if self.prefix:
            entry.setdefault("queue_name", f"{self.prefix}-{name}")
            self.names.add(entry["queue_name"])
            if fields.get("partition_by"):
                self.partitioned.add(entry["queue_name"])
        if self.queue_options:
            options = entry["driver_options"] = copy.deepcopy(entry.get("driver_options", {}))
            for key, values in self.queue_options.items():
                options.setdefault(key, dict(values))
        return entry

    def cleanup(self) -> None:
        """Remove what the test made on its broker (only names with its own prefix;
        AMQP holding queues expire by themselves)."""
        if self.kind == "queue.driver.amqp":
            import amqp_support

            amqp_support.delete_queues(sorted(self.names), partitioned=self.partitioned)
        elif self.kind == "queue.driver.redis":
            services.redis_delete_prefix(self.prefix)


def make(name: str) -> Backend:
    """The backend ``name`` with queue names of its own."""
    prefix = f"wq-test-{uuid.uuid4().hex[:10]}"
    if name == "memory":
        return Backend(name, "queue.driver.memory", prefix=prefix)
    if name == "redis":
        host, port = services.redis_address()
        services.require("Redis", host, port, module="redis")
        return Backend(name, "queue.driver.redis", {"url": services.REDIS_URL}, prefix)
    if name == "sqlite":
        # a relative path: a database file beside each test's entry files, so a test that
        # loads fresh folders (hypothesis examples) starts each one empty, as on memory
        fields = {"path": "queues.db", "poll_interval": "20ms"}
        return Backend(name, "queue.driver.sqlite", fields, prefix=prefix)
    if name == "amqp":
        import amqp_support

        amqp_support.require()
        restart = {"initial_delay": 0.05, "max_delay": 0.5}
        fields = {"url": amqp_support.URL, "lifecycle": {"restart": restart}}
        return Backend(name, "queue.driver.amqp", fields, prefix=prefix)
    if name == "sqs":
        from sqs_support import LEASE_S, driver_fields, shared

        return Backend(
            name,
            "queue.driver.sqs",
            driver_fields(shared().url),
            prefix,
            queue_options={"sqs": {"visibility_timeout": LEASE_S}},
        )
    raise AssertionError(f"no backend {name!r}")  # pragma: no cover


_CURRENT: contextvars.ContextVar[Backend | None] = contextvars.ContextVar("backend", default=None)


def current() -> Backend:
    """The backend of the running test (memory when the test did not ask for one)."""
    return _CURRENT.get() or Backend("memory", "queue.driver.memory")


def use(backend: Backend) -> contextvars.Token[Backend | None]:
    return _CURRENT.set(backend)


def reset(token: contextvars.Token[Backend | None]) -> None:
    _CURRENT.reset(token)


async def waiting(
    runtime: Runtime, queue_id: str, *, expect: int = 0, timeout_s: float = 5.0
) -> list[Message]:
    """The messages ready in a queue nobody consumes (dead letters, results), in order.

    Read through the driver protocol, so it works on every driver; each message is
    given back untried, so the queue is as it was. ``expect``: wait (bounded) until at
    least that many are counted ready (a broker's count may trail a confirmed publish).
    """
    queue = runtime.queues[queue_id]
    async with asyncio.timeout(timeout_s):
        while (ready := (await queue.info()).ready) < expect:
            await asyncio.sleep(0.01)
    if not ready:
        return []
    spec = SubscribeSpec("test:peek", queue.name, prefetch=ready, max_unsettled=ready)
    subscription = await queue.driver.subscribe(spec)
    try:
        async with asyncio.timeout(timeout_s):
            deliveries = [await subscription.receive() for _ in range(ready)]
    finally:
        await subscription.close()
    for delivery in reversed(deliveries):
        await delivery.release()
    return [delivery.message for delivery in deliveries]
