"""How the contract suite drives each driver: one ``Harness`` per driver.

A test names queues by short logical names (``"q"``); the harness maps them to
names of the test's own on the broker, so tests never touch one another's queues
(brokers are shared by every test and process). Fault hooks (kill the driver's
connections, restart the broker) exist for the drivers that have a broker; the
cases that need them, or a capability a driver lacks, are skipped by capability.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
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

#: every driver the contract suite runs on (broker drivers: marked ``services``)
DRIVERS = [
    "memory",
    pytest.param("amqp", marks=pytest.mark.services),
    pytest.param("amqp-classic", marks=pytest.mark.services),
]


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
    prefix: str = field(default_factory=lambda: f"wq-contract-{uuid.uuid4().hex[:10]}")
    #: removes what the test left on the broker (its own queues only)
    remove_queues: Callable[[Iterable[str]], None] | None = None
    used: set[str] = field(default_factory=set)

    def queue_name(self, name: str) -> str:
        self.used.add(name)
        return f"{self.prefix}-{name}"

    def cleanup(self) -> None:
        if self.remove_queues is not None:
            self.remove_queues(sorted(f"{self.prefix}-{name}" for name in self.used))

    def spec(self, name: str, max_length: int | None = None) -> QueueSpec:
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
    if name in ("amqp", "amqp-classic"):
        return _amqp(name)
    raise AssertionError(f"no harness for driver {name!r}")  # pragma: no cover


def _amqp(name: str) -> Harness:
    import amqp_support

    amqp_support.require()
    from wippy_queue.drivers.amqp.config import (
        CAPABILITIES,
        CLASSIC_CAPABILITIES,
        AmqpQueueOptions,
    )
    from wippy_queue.drivers.amqp.driver import AmqpDriver
    from wippy_queue.lifecycle.config import RestartPolicy

    classic = name == "amqp-classic"
    kind = "classic" if classic else "quorum"
    tag = f"wq-contract-{uuid.uuid4().hex[:10]}"
    # reconnect fast in tests: the broker is local
    policy = RestartPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.0)

    async def kill() -> None:
        assert await amqp_support.close_connections(tag) > 0

    made: list[AmqpDriver] = []

    def new_driver() -> AmqpDriver:
        made.append(AmqpDriver(f"t:{tag}", amqp_support.URL, restart=policy))
        return made[-1]

    def remove(names: Iterable[str]) -> None:
        held = {name for driver in made for name in driver.queue_names()}
        amqp_support.delete_queues(sorted({*names, *held}))

    return Harness(
        name,
        new_driver,
        lambda max_length: AmqpQueueOptions(type=kind, max_length=max_length),
        CLASSIC_CAPABILITIES if classic else CAPABILITIES,
        kill_connections=kill,
        # one broker restart for the whole suite: it stops everyone's connections
        restart_broker=None if classic else amqp_support.restart_broker,
        prefix=tag,
        remove_queues=remove,
    )
