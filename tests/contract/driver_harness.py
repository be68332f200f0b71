"""How the contract suite drives each driver: one ``Harness`` per driver.

A test names queues by short logical names (``"q"``); the harness maps them to
names of the test's own on the broker, so tests never touch one another's queues
(brokers are shared by every test and process). Fault hooks (kill the driver's
connections, restart the broker) exist for the drivers that have a broker; the
cases that need them, or a capability a driver lacks, are skipped by capability.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import services
from proxy import Proxy
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

#: every driver the contract suite runs on (brokers marked: they need a service)
DRIVERS = [
    "memory",
    "sqlite",
    pytest.param("redis", marks=pytest.mark.services),
    pytest.param("amqp", marks=pytest.mark.services),
    pytest.param("amqp-classic", marks=pytest.mark.services),
    pytest.param("sqs", marks=pytest.mark.services),
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
    #: queues can be bounded (``max_length``); the bounded cases skip otherwise
    bounded: bool = True
    #: the largest message body the broker carries (None: no limit)
    max_body_bytes: int | None = None
    prefix: str = field(default_factory=lambda: f"wq-contract-{uuid.uuid4().hex[:10]}")
    #: run in the test's loop before each driver starts (a proxy comes up) and after
    #: it stops (the last one takes the proxy down)
    setup: Callable[[], Awaitable[None]] | None = None
    teardown: Callable[[], Awaitable[None]] | None = None
    #: run after the test: remove what it made on the broker (its own keys only)
    cleanup: Callable[[], None] | None = None
    #: the logical queue names the test used
    used: set[str] = field(default_factory=set)

    def queue_name(self, name: str) -> str:
        self.used.add(name)
        return f"{self.prefix}-{name}"

    def spec(
        self, name: str, max_length: int | None = None, *, partitioned: bool = False
    ) -> QueueSpec:
        if max_length is not None and not self.bounded:
            pytest.skip(f"{self.name} cannot bound a queue (max_length)")
        options = self.queue_options(max_length)
        return QueueSpec(f"t:{name}", self.queue_name(name), options, partitioned=partitioned)

    @asynccontextmanager
    async def running(
        self, *queues: str, max_length: int | None = None, partitioned: bool = False
    ) -> AsyncIterator[Bound]:
        bound = Bound(self, self.new_driver())
        await bound.start()
        try:
            for queue in queues or ("q",):
                await bound.declare(queue, max_length, partitioned=partitioned)
            yield bound
        finally:
            await bound.stop()


class Bound:
    """A driver seen through logical queue names."""

    def __init__(self, harness: Harness, driver: Driver) -> None:
        self.harness = harness
        self.driver = driver

    async def start(self) -> None:
        if self.harness.setup is not None:
            await self.harness.setup()
        await self.driver.start()

    async def stop(self) -> None:
        if not self.driver.running:
            return
        await self.driver.stop()
        if self.harness.teardown is not None:
            await self.harness.teardown()

    async def declare(
        self, queue: str, max_length: int | None = None, *, partitioned: bool = False
    ) -> None:
        await self.driver.declare(self.harness.spec(queue, max_length, partitioned=partitioned))

    async def publish(self, queue: str, message: Message, partition: str = "") -> None:
        await self.driver.publish(self.harness.queue_name(queue), message, partition)

    async def subscribe(
        self,
        queue: str,
        *,
        prefetch: int = 10,
        consumer: str = "t:consumer",
        partition: str | None = None,
    ) -> Subscription:
        """``partition``: on a partitioned queue, the one it reads (None: every one)."""
        spec = SubscribeSpec(
            consumer, self.harness.queue_name(queue), prefetch, prefetch, partition=partition
        )
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
    if name == "redis":
        return _redis()
    if name == "sqlite":
        return _sqlite(name)
    if name in ("amqp", "amqp-classic"):
        return _amqp(name)
    if name == "sqs":
        return _sqs(name)
    raise AssertionError(f"no harness for driver {name!r}")  # pragma: no cover


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _redis() -> Harness:
    host, port = services.redis_address()
    services.require("Redis", host, port, module="redis")
    from wippy_queue.drivers.redis.config import CAPABILITIES, RedisQueueOptions
    from wippy_queue.drivers.redis.driver import RedisDriver
    from wippy_queue.lifecycle.config import RestartPolicy

    proxy = Proxy(host, port)
    proxy.port = free_port()
    lease_s = 1.0
    fast = RestartPolicy(initial_delay=0.05, max_delay=0.5, jitter=0.0)

    async def restart() -> None:
        await proxy.down()
        await asyncio.sleep(0.5)  # the broker is away for a while
        await proxy.up()

    harness = Harness(
        "redis",
        lambda: RedisDriver(f"t:{harness.prefix}", f"redis://127.0.0.1:{proxy.port}/0", fast),
        lambda max_length: RedisQueueOptions(max_length=max_length, visibility_timeout=lease_s),
        CAPABILITIES,
        lease_s=lease_s,
        kill_connections=proxy.drop,
        restart_broker=restart,
        setup=proxy.acquire,
        teardown=proxy.release,
    )
    harness.cleanup = lambda: services.redis_delete_prefix(harness.prefix)
    return harness


def _sqlite(name: str) -> Harness:
    """Every instance of one test on one database file of its own (removed afterwards);
    leases of 1 s, so the lease cases run fast."""
    from wippy_queue.drivers.sqlite.config import CAPABILITIES, SqliteQueueOptions
    from wippy_queue.drivers.sqlite.driver import SqliteDriver

    folder = tempfile.mkdtemp(prefix="wq-sqlite-")
    lease_s = 1.0
    harness = Harness(
        name,
        lambda: SqliteDriver("t:sqlite", f"{folder}/queues.db", poll_interval_s=0.02),
        lambda max_length: SqliteQueueOptions(max_length=max_length, visibility_timeout=lease_s),
        CAPABILITIES,
        lease_s=lease_s,
    )
    weakref.finalize(harness, shutil.rmtree, folder, True)
    return harness


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

    harness = Harness(
        name,
        new_driver,
        lambda max_length: AmqpQueueOptions(type=kind, max_length=max_length),
        CLASSIC_CAPABILITIES if classic else CAPABILITIES,
        kill_connections=kill,
        # one broker restart for the whole suite: it stops everyone's connections
        restart_broker=None if classic else amqp_support.restart_broker,
        prefix=tag,
    )
    harness.cleanup = lambda: remove(f"{tag}-{name}" for name in harness.used)
    return harness


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
