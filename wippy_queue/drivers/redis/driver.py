"""``queue.driver.redis``: Redis Streams, one consumer group per queue, leases.

A queue is a stream named by its ``queue_name``. Every consumer of it, in this
process or another, reads through one consumer group (``wippy-queue``), so they
compete for messages as on every driver; each running subscription is a group
member named ``<consumer id>@<instance>``. A delivery is a pending entry: its
delivery count is the attempt, its idle time the lease, and an entry idle for the
queue's ``visibility_timeout`` (its holder died) is claimed by a live member.
Settles, requeues and delayed nacks are atomic scripts (``scripts.py``); publishes
and settles from every worker share round trips (``drivers/batch.py``).

A partitioned queue has a stream per partition: the queue's own stream for messages
without one, ``<queue>:wq:p:<partition>`` for the others, each with its group and its
delayed set, and the set ``<queue>:wq:partitions`` names them all. A publish to a new
partition makes its stream and adds it to the set first; a subscriber of one partition
reads its stream, one of every partition reads every stream in the set (and looks
again for new ones while it runs). A requeue or delayed nack goes back to the entry's
own stream, so a message never leaves its partition.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from wippy_queue.drivers.batch import Batcher
from wippy_queue.drivers.redis import scripts
from wippy_queue.drivers.redis.config import (
    CAPABILITIES,
    RedisConsumerOptions,
    RedisDriverConfig,
    RedisQueueOptions,
)
from wippy_queue.drivers.redis.entries import fields_of
from wippy_queue.drivers.redis.link import (
    CONNECTION_ERRORS,
    GROUP,
    Keys,
    ensure_partition,
    partition_stream,
)
from wippy_queue.drivers.redis.subscription import RedisSubscription
from wippy_queue.drivers.redis.wire import Command, Wire
from wippy_queue.errors import DriverError
from wippy_queue.lifecycle.backoff import restart_delay
from wippy_queue.lifecycle.config import RestartPolicy
from wippy_queue.queue.driver import (
    Driver,
    QueueInfo,
    QueueSpec,
    SubscribeSpec,
    Subscription,
)
from wippy_queue.queue.message import Message
from wippy_queue.registry.entry import Entry
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: publish waits this long (doubling to the max) while a bounded queue is full
FULL_WAIT_S, FULL_WAIT_MAX_S = 0.01, 0.2
#: delayed messages added by other processes are moved within this; at most this many
#: per queue in one pass
PROMOTE_EVERY_S, PROMOTE_MOST = 1.0, 500
#: a reply later than this means the connection is gone (reconnect)
SOCKET_TIMEOUT_S = 10.0
#: a subscription that has not said it is alive for this long is not counted as a
#: consumer (a live one says so every ``HEARTBEAT_S``; one whose process died stops)
CONSUMER_LIVE_S = 15.0

T = TypeVar("T")


class RedisDriver(Driver):
    capabilities = CAPABILITIES

    def __init__(self, entry_id: str, url: str, restart: RestartPolicy | None = None) -> None:
        super().__init__(entry_id)
        self.url = url
        self.restart = restart or RestartPolicy()
        #: names this process's connections and group members
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.client_name = f"wippy-queue:{entry_id}:{self.instance}".replace(" ", "_")
        self.client: aioredis.Redis | None = None
        self.queues: dict[str, RedisQueueOptions] = {}
        self._running = False
        self._up = asyncio.Event()
        self._stopped = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._promoter: asyncio.Task[None] | None = None
        self._wake_promoter = asyncio.Event()
        self._publishes: Batcher[tuple[str, str, Message], bool] = Batcher(self._flush_publishes)
        #: the partitioned queues, and the partition streams this instance has made sure of
        self.partitioned: set[str] = set()
        self._streams_known: set[str] = set()
        #: the publishes' own connection (``wire.py``), and every wire made
        self._wire: Wire | None = None
        self._promote_wire: Wire | None = None
        self._wires: weakref.WeakSet[Wire] = weakref.WeakSet()
        self.subscriptions: set[RedisSubscription] = set()
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_entry(cls, entry: Entry) -> RedisDriver:
        config = entry.config
        assert isinstance(config, RedisDriverConfig)
        return cls(entry.id, config.url, config.lifecycle.restart)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def connected(self) -> bool:
        return self._running and self._up.is_set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.failed = loop.create_future()
        self._stopped = asyncio.Event()
        self._up = asyncio.Event()
        self._wake_promoter = asyncio.Event()
        client = aioredis.Redis.from_url(
            self.url,
            client_name=self.client_name,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            max_connections=None,
        )
        try:
            await client.ping()
        except (RedisError, OSError) as err:
            await client.aclose()
            raise DriverError(
                f"driver {self.entry_id}: cannot reach Redis at {_safe(self.url)}: {err}"
            ) from err
        self.client = client
        self._scripts = {
            name: client.register_script(getattr(scripts, name))
            for name in ("PUBLISH_BOUNDED", "SETTLE", "EXTEND", "PROMOTE", "LEAVE")
        }
        self._wire, self._promote_wire = self.new_wire(), self.new_wire()
        self._running = True
        self._up.set()
        self._promoter = asyncio.create_task(self._promote_loop(), name=f"{self.entry_id}:delayed")

    async def stop(self) -> None:
        if not self._running:
            return
        for subscription in list(self.subscriptions):  # gives back what they buffered
            await subscription.close()
        self._running = False
        self._stopped.set()
        await cancel_and_wait(t for t in (self._promoter, self._reconnecting) if t)
        self._promoter = self._reconnecting = None
        await self._publishes.close()
        for wire in list(self._wires):
            await wire.close()
        if self.client is not None:
            await self.client.aclose()
        self.client = self._wire = self._promote_wire = None

    # -- the connection -------------------------------------------------------------

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]], what: str) -> T:
        """Run ``fn`` on the client; while the connection is down, wait for it and try
        again (the caller's operation must be safe to repeat); redis errors become
        DriverError."""
        while True:
            client = await self.wait_up()
            try:
                return await fn(client)
            except CONNECTION_ERRORS as err:
                self.connection_lost(err)
            except RedisError as err:
                raise DriverError(f"driver {self.entry_id}: {what} failed: {err}") from err

    async def wait_up(self) -> aioredis.Redis:
        """The client once connected; DriverError if the driver stops or gives up first."""
        if not self._up.is_set():
            up, stopped = (
                asyncio.ensure_future(self._up.wait()),
                asyncio.ensure_future(self._stopped.wait()),
            )
            try:
                await asyncio.wait([up, stopped], return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
                stopped.cancel()
        if not self._running or self.client is None:
            raise self.not_running_error()
        return self.client

    def connection_lost(self, err: BaseException) -> None:
        """Pause everything on this driver and reconnect with back-off."""
        if not self._running or not self._up.is_set():
            return
        self._up.clear()
        log.warning("driver %s: lost Redis (%s); reconnecting", self.entry_id, err)
        self._reconnecting = asyncio.create_task(
            self._reconnect(), name=f"{self.entry_id}:reconnect"
        )

    async def _reconnect(self) -> None:
        attempt = 0
        while self._running and self.client is not None:
            try:
                await self.client.ping()
            except CONNECTION_ERRORS as err:
                attempt += 1
                policy = self.restart
                if policy.max_attempts and attempt >= policy.max_attempts:
                    self._give_up(err, attempt)
                    return
                await asyncio.sleep(restart_delay(policy, attempt))
                continue
            except RedisError as err:
                self._give_up(err, attempt)
                return
            log.info("driver %s: reconnected to Redis", self.entry_id)
            self._up.set()
            return

    def _give_up(self, err: BaseException, attempts: int) -> None:
        error = DriverError(
            f"driver {self.entry_id}: Redis at {_safe(self.url)} unreachable after "
            f"{attempts} attempts: {err}"
        )
        log.error("%s", error)
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(error)

    # -- queues -------------------------------------------------------------------

    async def declare(self, spec: QueueSpec) -> None:
        options = spec.options if spec.options is not None else RedisQueueOptions()
        if not isinstance(options, RedisQueueOptions):
            raise DriverError(f"queue {spec.id}: redis driver options expected, got {options!r}")
        keys = Keys(spec.name)
        wanted = {
            "visibility_timeout": str(float(options.visibility_timeout)),
            "max_length": str(options.max_length or 0),
        }

        async def declare(client: aioredis.Redis) -> dict[Any, Any]:
            try:
                await client.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
            for field, value in wanted.items():
                await client.hsetnx(keys.meta, field, value)
            if spec.partitioned:  # the queue's own stream is the partition of messages without
                await ensure_partition(client, spec.name, spec.name)
            held: dict[Any, Any] = await client.hgetall(keys.meta)
            return held

        held = await self.call(declare, f"declaring queue {spec.name!r}")
        for field, value in wanted.items():
            before = held.get(field.encode(), b"").decode()
            if before != value:
                raise DriverError(
                    f"queue {spec.name!r} on Redis is declared with {field} {before}; "
                    f"{spec.id} asks for {value}: give every entry of it one value"
                )
        self.queues[spec.name] = options
        if spec.partitioned:
            self.partitioned.add(spec.name)

    def _options(self, queue: str) -> RedisQueueOptions:
        return self.declared(self.queues, queue)

    async def publish(self, queue: str, message: Message, partition: str = "") -> None:
        if not self._running:
            raise self.not_running_error()
        self._options(queue)
        stream = partition_stream(queue, partition) if queue in self.partitioned else queue
        if stream not in self._streams_known and stream != queue:
            await self.call(lambda c: ensure_partition(c, queue, stream), f"partition of {queue!r}")
            self._streams_known.add(stream)
        wait_s = FULL_WAIT_S
        while not await self._publishes.submit((queue, stream, message)):  # full: wait
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, FULL_WAIT_MAX_S)
            if not self._running:
                raise self.not_running_error()

    async def _flush_publishes(
        self, items: Sequence[tuple[str, str, Message]]
    ) -> list[bool | BaseException]:
        """One write for every publish waiting: True when added, False when full."""
        wire = self._wire
        assert wire is not None
        commands = [self._publish_command(wire, *item) for item in items]
        replies = await self.call(lambda _: wire.call(commands), "publishing")
        return [
            DriverError(f"driver {self.entry_id}: publishing to {queue!r} failed: {reply}")
            if isinstance(reply, ResponseError)
            else reply is not None  # a bounded queue's script says None (false) when full
            for reply, (queue, _, _) in zip(replies, items, strict=True)
        ]

    def _publish_command(self, wire: Wire, queue: str, stream: str, message: Message) -> Command:
        """The write of ``message`` to ``stream`` (the queue's own, or its partition's; a
        bound counts per partition)."""
        bound = self.queues[queue].max_length
        if bound:
            keys = Keys(stream)
            return wire.evalsha(
                self.script("PUBLISH_BOUNDED"),
                [keys.stream, keys.delayed],
                [GROUP, bound, *fields_of(message)],
            )
        return ("XADD", stream, "*", *fields_of(message))

    async def subscribe(self, spec: SubscribeSpec) -> Subscription:
        if not self._running:
            raise self.not_running_error()
        options = spec.options if spec.options is not None else RedisConsumerOptions()
        assert isinstance(options, RedisConsumerOptions)
        subscription = RedisSubscription(
            self, spec, self._options(spec.queue), options, spec.queue in self.partitioned
        )
        await subscription.open()
        return subscription

    def script(self, name: str) -> Any:
        return self._scripts[name]

    def new_wire(self, *, timeout_s: float = SOCKET_TIMEOUT_S, name: str = "") -> Wire:
        """A connection of its own for one caller's round trips (closed at the latest
        when the driver stops); ``name`` makes its client name its own."""
        if self.client is None:
            raise self.not_running_error()
        full = f"{self.client_name}:{name}" if name else ""
        wire = Wire(self.client, timeout_s=timeout_s, name=full)
        self._wires.add(wire)
        return wire

    def delayed_added(self) -> None:
        """A nack was delayed here: the promoter looks again now."""
        self._wake_promoter.set()

    async def info(self, queue: str) -> QueueInfo:
        if not self._running:
            raise self.not_running_error()
        self._options(queue)
        keys = Keys(queue)
        streams = await self.streams_of(queue)

        async def read(client: aioredis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.get(keys.expired)
            pipe.zcount(keys.members, int((time.time() - CONSUMER_LIVE_S) * 1000), "+inf")
            for stream in streams:
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
                pipe.zcard(Keys(stream).delayed)
            done: list[Any] = await pipe.execute(raise_on_error=False)
            return done

        expired, live, *counts = await self.call(read, f"reading {queue!r}")
        ready = pending = delayed = 0
        for i in range(0, len(counts), 3):
            length, groups, waiting = counts[i : i + 3]
            if isinstance(groups, ResponseError):  # a partition's stream gone (deleted)
                continue
            if isinstance(length, BaseException) or isinstance(waiting, BaseException):
                raise DriverError(f"driver {self.entry_id}: reading {queue!r} failed: {length}")
            group: dict[str, Any] = next((g for g in groups if _text(g.get("name")) == GROUP), {})
            held = int(group.get("pending", 0))
            ready += max(length - held, 0)
            pending += held
            delayed += waiting
        if isinstance(expired, BaseException) or isinstance(live, BaseException):
            raise DriverError(f"driver {self.entry_id}: reading {queue!r} failed: {expired}")
        return QueueInfo(
            queue=queue,
            consumer_count=int(live),
            ready=ready,
            in_flight=pending,
            delayed=delayed,
            expired=int(expired or 0),
        )

    async def streams_of(self, queue: str) -> list[str]:
        """The streams of ``queue``: its own, and on a partitioned queue every partition's
        (those other processes made included)."""
        if queue not in self.partitioned:
            return [queue]
        key = Keys(queue).partitions
        found = await self.call(lambda c: c.smembers(key), f"reading partitions of {queue!r}")
        return sorted({queue, *(_text(s) for s in found)})

    # -- delayed messages -----------------------------------------------------------

    async def _promote_all(self) -> float:
        """Move what is due on every queue (every partition), in one round trip (two with
        partitions); seconds until the next delayed message is due (at most
        PROMOTE_EVERY_S)."""
        wire = self._promote_wire
        if wire is None or not self.queues:
            return PROMOTE_EVERY_S
        queues = []
        for name in list(self.queues):
            queues += await self.streams_of(name) if name in self.partitioned else [name]
        script = self.script("PROMOTE")
        commands = [
            wire.evalsha(script, [keys.stream, keys.delayed], [PROMOTE_MOST, keys.delayed_prefix])
            for keys in map(Keys, queues)
        ]
        replies = await self.call(lambda _: wire.call(commands), "moving delayed messages")
        wait_s = PROMOTE_EVERY_S
        for queue, reply in zip(queues, replies, strict=True):
            if isinstance(reply, ResponseError):
                log.warning(
                    "driver %s: moving delayed messages of %r failed: %s",
                    self.entry_id,
                    queue,
                    reply,
                )
            elif int(reply) >= 0:  # milliseconds until its next one is due (-1: none waits)
                wait_s = min(wait_s, int(reply) / 1000)
        return wait_s

    async def _promote_loop(self) -> None:
        """Move due delayed messages to their streams (any instance may: it is atomic)."""
        while self._running:
            self._wake_promoter.clear()  # before the pass: a delay added meanwhile wakes it
            try:
                wait_s = await self._promote_all()
            except DriverError as err:
                log.warning("driver %s: %s", self.entry_id, err)
                wait_s = PROMOTE_EVERY_S
            try:
                async with asyncio.timeout(wait_s):
                    await self._wake_promoter.wait()
            except TimeoutError:
                pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
