"""How the contract suite drives each driver: one ``Harness`` per driver.

A test names queues by short logical names (``"q"``); the harness maps them to
names of the test's own on the broker, so tests never touch one another's queues
(brokers are shared by every test and process). Fault hooks (kill the driver's
connections, restart the broker) exist for the drivers that have a broker; the
cases that need them, or a capability a driver lacks, are skipped by capability.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from pydantic import BaseModel

from wippy_queue.queue.driver import (
    Capabilities,
    Driver,
    QueueInfo,
    QueueSpec,
    SubscribeSpec,
    Subscription,
)
from wippy_queue.queue.message import Message

#: every driver the contract suite runs on
DRIVERS = ["memory", pytest.param("sqs", marks=pytest.mark.services)]


@dataclass
class Harness:
    name: str
    new_driver: Callable[[], Driver]
    #: the driver's queue options model, given a max_length (None: unbounded)
    queue_options: Callable[[int | None], BaseModel]
    capabilities: Capabilities
    #: lease of a delivery in these tests (leasing drivers: short, so expiry is testable)
    lease_s: float | None = None
    #: close every client connection of ours on the broker (None: no broker)
    kill_connections: Callable[[], Awaitable[None]] | None = None
    #: stop the broker, then start it again
    restart_broker: Callable[[], Awaitable[None]] | None = None
    #: queues can be bounded (``max_length``); the bounded cases skip otherwise
    bounded: bool = True
    #: the largest message body the broker carries (None: no limit)
    max_body_bytes: int | None = None
    prefix: str = field(default_factory=lambda: f"wq-contract-{uuid.uuid4().hex[:10]}")

    def queue_name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def spec(self, name: str, max_length: int | None = None) -> QueueSpec:
        if max_length is not None and not self.bounded:
            pytest.skip(f"{self.name} cannot bound a queue (max_length)")
        return QueueSpec(f"t:{name}", self.queue_name(name), self.queue_options(max_length))

    @asynccontextmanager
    async def running(self, *queues: str, max_length: int | None = None) -> AsyncIterator[Bound]:
        bound = Bound(self, self.new_driver())
        await bound.start()
        try:
            for queue in queues or ("q",):
                await bound.declare(queue, max_length)
            yield bound
        finally:
            await bound.stop()


class Bound:
    """A driver seen through logical queue names."""

    def __init__(self, harness: Harness, driver: Driver) -> None:
        self.harness = harness
        self.driver = driver

    async def start(self) -> None:
        await self.driver.start()

    async def stop(self) -> None:
        await self.driver.stop()

    async def declare(self, queue: str, max_length: int | None = None) -> None:
        await self.driver.declare(self.harness.spec(queue, max_length))

    async def publish(self, queue: str, message: Message) -> None:
        await self.driver.publish(self.harness.queue_name(queue), message)

    async def subscribe(
        self, queue: str, *, prefetch: int = 10, consumer: str = "t:consumer"
    ) -> Subscription:
        spec = SubscribeSpec(consumer, self.harness.queue_name(queue), prefetch, prefetch)
        return await self.driver.subscribe(spec)

    async def info(self, queue: str) -> QueueInfo:
        return await self.driver.info(self.harness.queue_name(queue))

    async def wait_idle(self, queue: str, *, timeout_s: float | None = None) -> None:
        await self.driver.wait_idle(self.harness.queue_name(queue), timeout_s=timeout_s)


def make(name: str) -> Harness:
    if name == "memory":
        from wippy_queue.drivers.memory import CAPABILITIES, MemoryDriver, MemoryQueueOptions

        return Harness(
            name,
            lambda: MemoryDriver("t:memory"),
            lambda max_length: MemoryQueueOptions(max_length=max_length),
            CAPABILITIES,
        )
    if name == "sqs":
        return _sqs(name)
    raise AssertionError(f"no harness for driver {name!r}")


def _sqs(name: str) -> Harness:
    from sqs_support import LEASE_S, driver_fields, shared

    from wippy_queue.drivers.sqs.config import (
        CAPABILITIES,
        MAX_MESSAGE_BYTES,
        SqsDriverConfig,
        SqsQueueOptions,
    )
    from wippy_queue.drivers.sqs.driver import SqsDriver

    config = SqsDriverConfig.model_validate(driver_fields(shared().url))
    return Harness(
        name,
        lambda: SqsDriver("t:sqs", config),
        lambda max_length: SqsQueueOptions(visibility_timeout=LEASE_S),
        CAPABILITIES,
        lease_s=LEASE_S,
        bounded=False,
        # a body and its three attributes share SQS's 1 MiB
        max_body_bytes=MAX_MESSAGE_BYTES - 1024,
    )  # pragma: no cover
