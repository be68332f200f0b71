"""``queue.driver.amqp``: RabbitMQ (AMQP 0-9-1) through aio-pika.

Durable by default: quorum queues, persistent messages, publisher confirms always
on and pipelined (a publish returns once the broker confirmed it; many are in flight
on one channel). See ``subscription.py`` for what each settle is on the wire,
``topology.py`` for the queues, ``partitions.py`` for partitioned queues and
``wire.py`` for the message format.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

import aiormq
from pamqp.commands import Basic

from wippy_queue.drivers.amqp import topology, wire
from wippy_queue.drivers.amqp.batching import Batcher
from wippy_queue.drivers.amqp.census import Census, Held
from wippy_queue.drivers.amqp.config import CAPABILITIES, AmqpDriverConfig, AmqpQueueOptions
from wippy_queue.drivers.amqp.link import CLIENT_ERRORS, RECONNECT_ERRORS, Link, translate
from wippy_queue.drivers.amqp.partitions import Partitions, partition_queue
from wippy_queue.drivers.amqp.subscription import AmqpSubscription
from wippy_queue.drivers.amqp.topology import QueueState
from wippy_queue.errors import DriverError
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

log = logging.getLogger(__name__)

#: how long a publish to a full queue waits before it looks again (doubling to the max)
FULL_RETRY_S = (0.005, 0.25)
#: how often wait_idle asks the broker
IDLE_POLL_S = 0.02
#: the second look that confirms an idle queue with holding queues (see wait_idle)
IDLE_CONFIRM_S = 0.1
#: the longest ``info`` waits for settles' copies being published to be confirmed
MOVES_WAIT_S = 1.0


class _Channel:
    """A channel the driver itself uses (publishing, declaring), reopened when lost."""

    def __init__(self, link: Link, *, confirms: bool) -> None:
        self._link = link
        self._confirms = confirms
        self._raw: Any = None
        self._generation = -1
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        raw = self._raw
        if raw is not None and not raw.is_closed and self._generation == self._link.generation:
            return raw
        async with self._lock:
            raw = self._raw
            if raw is None or raw.is_closed or self._generation != self._link.generation:
                _channel, raw, self._generation = await self._link.channel(confirms=self._confirms)
                self._raw = raw
            return raw

    def reset(self) -> None:
        self._raw = None

    async def queue_declare(self, queue: str, **arguments: Any) -> Any:
        """``queue.declare`` on the channel, shielded from the caller's cancellation:
        aiormq closes a channel whose call is cancelled, and this one is shared (a
        publish cancelled while it counted a full queue broke the next ``info``)."""
        raw = await self.get()
        return await asyncio.shield(raw.queue_declare(queue, **arguments))


class AmqpDriver(Driver):
    """``queue.driver.amqp``."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        entry_id: str,
        url: str = AmqpDriverConfig.model_fields["url"].default,
        *,
        restart: RestartPolicy | None = None,
    ) -> None:
        super().__init__(entry_id)
        self.link = Link(entry_id, url, restart or RestartPolicy())
        self.link.on_up(self._after_reconnect)
        self._running = False
        self._queues: dict[str, QueueState] = {}
        self._subscriptions: set[AmqpSubscription] = set()
        self._publisher = _Channel(self.link, confirms=True)
        self._batch: Batcher | None = None
        self._census = Census(self.link, self._holding)
        self._admin = _Channel(self.link, confirms=False)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: holding queue -> when this driver last declared it (monotonic seconds)
        self._held: dict[str, float] = {}
        #: bounded queue -> room left at the last look (publishes since take from it)
        self._room: dict[str, int] = {}
        #: partitioned queue -> what follows its stream of partition names
        self._partitions: dict[str, Partitions] = {}
        #: subscriptions that read every partition (told of each partition found)
        self._readers: set[AmqpSubscription] = set()
        self._making = asyncio.Lock()

    @classmethod
    def from_entry(cls, entry: Entry) -> AmqpDriver:
        config = entry.config
        assert isinstance(config, AmqpDriverConfig)
        return cls(entry.id, config.url, restart=config.lifecycle.restart)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def connected(self) -> bool:
        return self._running and self.link.up.is_set()

    async def start(self) -> None:
        await self.link.open()
        self.failed = self.link.failed
        self._publisher.reset()
        self._admin.reset()
        self._held.clear()
        await self._census.open()
        self._running = True
        for partitions in self._partitions.values():  # a start after a stop
            await partitions.follow()

    async def stop(self) -> None:
        self._running = False
        for subscription in list(self._subscriptions):
            with contextlib.suppress(Exception):
                await subscription.close()
        self._subscriptions.clear()
        self._readers.clear()
        for partitions in self._partitions.values():
            await partitions.stop()
        await self.link.close()
        for task in list(self._tasks):
            task.cancel()

    def keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def queue_names(self) -> list[str]:
        """Every queue this driver declared: partitions', holding queues and the streams
        of partition names included."""
        names = [name for state in self._queues.values() for name in (state.name, *state.holding)]
        return names + [partitions.registry for partitions in self._partitions.values()]

    def forget(self, subscription: AmqpSubscription) -> None:
        self._subscriptions.discard(subscription)
        self._readers.discard(subscription)

    async def _after_reconnect(self) -> None:
        self._publisher.reset()
        self._admin.reset()
        self._held.clear()
        await self._census.open()
        for state in list(self._queues.values()):
            await self._declare_on_broker(state.spec, state.options)
        for partitions in self._partitions.values():
            await partitions.follow()
        for subscription in list(self._subscriptions):
            await subscription.reopen_after_reconnect()

    # -- queues -------------------------------------------------------------------

    async def declare(self, spec: QueueSpec) -> None:
        if not self._running:
            raise self.not_running_error()
        options = spec.options if spec.options is not None else AmqpQueueOptions()
        if not isinstance(options, AmqpQueueOptions):
            raise DriverError(f"queue {spec.id}: amqp driver options expected, got {options!r}")
        known = self._queues.get(spec.name)
        if known is not None:
            for option in ("type", "max_length"):
                mine, theirs = getattr(known.options, option), getattr(options, option)
                if mine != theirs:
                    raise DriverError(
                        f"queue {spec.name!r} is declared with {option} {mine}; {spec.id} "
                        f"asks for {option} {theirs}: give the two one value"
                    )
        await self._declare_on_broker(spec, options)
        if known is None:
            self._queues[spec.name] = QueueState(spec.name, spec, options, spec.content_type)
        if spec.partitioned and spec.name not in self._partitions:
            partitions = Partitions(self.link, spec.name, self._partition_heard)
            await partitions.follow()
            self._partitions[spec.name] = partitions

    def _partition_heard(self, queue: str, name: str) -> None:
        """Another process made a partition queue: consume it where every partition is read."""
        if name not in self._queues and self._running:
            self.keep(asyncio.get_running_loop().create_task(self._partition_found(queue, name)))

    async def _partition_found(self, queue: str, name: str) -> None:
        try:
            await self._partition_named(queue, name)
        except DriverError as err:  # a reconnect or the next reader's look finds it again
            log.warning("driver %s: partition queue %r: %s", self.entry_id, name, err)

    async def partition(self, queue: str, partition: str) -> QueueState:
        """The queue of ``partition`` of the partitioned ``queue`` (made if new)."""
        name = partition_queue(queue, partition)
        return self._queues.get(name) or await self._partition_named(queue, name)

    async def _partition_named(self, queue: str, name: str) -> QueueState:
        async with self._making:
            state = self._queues.get(name)
            if state is None:
                base = self._state(queue)
                spec = dataclasses.replace(base.spec, name=name)
                await self._declare_on_broker(spec, base.options)
                state = QueueState(name, spec, base.options, base.content_type, base=queue)
                await self._partitions[queue].announce(name, self._announce)
                self._queues[name] = state
        for reader in list(self._readers):
            if reader.state.name == queue:
                await reader.add(state)
        return state

    async def _announce(self, registry: str, body: bytes) -> None:
        await self.publish_raw(registry, body, Basic.Properties(delivery_mode=2))

    def _states_of(self, queue: str) -> list[QueueState]:
        """The queue's own state and, on a partitioned queue, every partition's known here."""
        return [s for s in self._queues.values() if s.queue == queue]

    async def _declare_on_broker(self, spec: QueueSpec, options: AmqpQueueOptions) -> None:
        try:
            await self._admin.queue_declare(
                spec.name, durable=True, arguments=topology.queue_arguments(options)
            )
        except aiormq.exceptions.ChannelPreconditionFailed as err:
            self._admin.reset()
            raise topology.conflict(spec, err) from err
        except CLIENT_ERRORS as err:
            self._admin.reset()
            raise translate(err, f"declaring queue {spec.name!r}") from err

    def _state(self, queue: str) -> QueueState:
        return self.declared(self._queues, queue)

    # -- publishing -----------------------------------------------------------------

    async def publish(self, queue: str, message: Message, partition: str = "") -> None:
        if not self._running:
            raise self.not_running_error()
        state = self._state(queue)
        if partition and queue in self._partitions:
            state = await self.partition(queue, partition)
        properties = wire.properties_of(message, state.content_type)
        await self.publish_raw(state.name, message.body, properties, bounded=state.max_length)

    async def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        bounded: int | None = None,
    ) -> None:
        """Publish to the default exchange and wait for the broker's confirm; while the
        connection is down, wait for it; a queue full (``reject-publish``) waits for room."""
        pause_s = FULL_RETRY_S[0]
        while True:
            await self.link.wait_up(lambda: self._running)
            if bounded is not None:
                await self._wait_for_room(routing_key, bounded)
            try:
                confirm = await (await self._batcher()).publish(routing_key, body, properties)
            except aiormq.exceptions.PublishError as err:
                raise DriverError(
                    f"queue {routing_key!r} does not exist on the broker (the message was "
                    "returned); declare it first"
                ) from err
            except aiormq.exceptions.DeliveryError:
                confirm = None  # basic.nack
            except RECONNECT_ERRORS as err:
                if not self._running:
                    raise self.not_running_error() from err
                log.debug("publish to %s: %s; trying again", routing_key, err)
                await asyncio.sleep(0.01)
                continue
            if isinstance(confirm, Basic.Ack):
                return
            if bounded is None:
                raise DriverError(f"the broker refused a message for queue {routing_key!r}")
            self._room[routing_key] = 0
            await asyncio.sleep(pause_s)  # full: reject-publish
            pause_s = min(pause_s * 2, FULL_RETRY_S[1])

    async def _batcher(self) -> Batcher:
        raw = await self._publisher.get()
        batcher = self._batch
        if batcher is None or batcher.raw is not raw:
            batcher = self._batch = Batcher(raw)
        return batcher

    async def _wait_for_room(self, queue: str, max_length: int) -> None:
        """Wait while ``queue`` holds ``max_length`` ready messages; the broker's
        ``reject-publish`` stops what slips past this look."""
        if self._room.get(queue, 0) > 0:
            self._room[queue] -= 1
            return
        pause_s = FULL_RETRY_S[0]
        while True:
            ready, _ = await self._counts(queue)
            if ready < max_length:
                self._room[queue] = max_length - ready - 1
                return
            if not self._running:
                raise self.not_running_error()
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, FULL_RETRY_S[1])

    async def hold(
        self, state: QueueState, delay_s: float, body: bytes, properties: Basic.Properties
    ) -> None:
        """Publish to ``state``'s holding queue for ``delay_s`` (declared as needed)."""
        ms = topology.delay_ms(delay_s)
        name = topology.holding_name(state.name, ms)
        # re-declared now and then: each declare restarts its x-expires clock
        last = self._held.get(name)
        if last is None or time.monotonic() - last > topology.HOLD_EXPIRES_MARGIN_MS / 4000:
            try:
                await self._admin.queue_declare(
                    name, durable=True, arguments=topology.holding_arguments(state.name, ms)
                )
            except CLIENT_ERRORS as err:
                self._admin.reset()
                raise translate(err, f"declaring holding queue {name!r}") from err
            self._held[name] = time.monotonic()
            state.holding[name] = ms
        await self.publish_raw(name, body, properties)

    # -- consuming and counting -------------------------------------------------------

    async def subscribe(self, spec: SubscribeSpec) -> Subscription:
        if not self._running:
            raise self.not_running_error()
        state = self._state(spec.queue)
        if spec.queue not in self._partitions:
            subscription = AmqpSubscription(self, state, spec)
        elif spec.partition is not None:  # one partition's queue
            subscription = AmqpSubscription(
                self, await self.partition(spec.queue, spec.partition), spec
            )
        else:
            subscription = AmqpSubscription(self, state, spec, self._states_of(spec.queue))
            self._readers.add(subscription)
        await subscription.open()
        self._subscriptions.add(subscription)
        return subscription

    async def _counts(self, queue: str) -> tuple[int, int]:
        """(ready, consumers) of ``queue`` on the broker; DriverError if it is not there."""
        try:
            ok = await self._admin.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as err:
            self._admin.reset()
            raise DriverError(f"queue {queue!r} does not exist on the broker") from err
        except CLIENT_ERRORS as err:
            self._admin.reset()
            raise translate(err, f"counting queue {queue!r}") from err
        return ok.message_count or 0, ok.consumer_count or 0

    async def consumer_count(self, queue: str) -> int:
        return (await self._counts(queue))[1]

    async def _delayed(self, state: QueueState) -> int:
        total = 0
        for name in list(state.holding):
            try:
                total += (await self._counts(name))[0]
            except DriverError:
                state.holding.pop(name, None)  # it removed itself (x-expires): empty
                self._held.pop(name, None)
        return total

    async def info(self, queue: str) -> QueueInfo:
        """Counts of the queue, summed over every partition's queue (``consumer_count``
        too: this process's readers of every partition are counted once, another
        process's once per partition queue it consumes)."""
        self._state(queue)
        await self.link.wait_up(lambda: self._running)
        states = self._states_of(queue)
        for state in states:
            await state.moves_done(MOVES_WAIT_S)
        ready = delayed = expired = consumers = 0
        for state in states:  # the broker's counts before the census: see census.py
            waiting, listed = await self._counts(state.name)
            ready += waiting
            consumers += listed
        ours = [s for s in self._subscriptions if s.state.queue == queue]
        # a reader of every partition is listed once per partition queue: count it once
        consumers -= sum(len(s.states) - 1 for s in ours if not s.closed)
        mine = self._holding(queue)
        theirs = await self._census.count(queue, consumers - mine.consumers)
        self._learn_holding(states, theirs.holding)
        for state in states:
            delayed += await self._delayed(state)
            expired += state.expired
        closing = sum(s.closed for s in ours)
        # ours being closed may still be listed by the broker (see subscription.close)
        consumers = max(consumers - closing, mine.consumers - closing)
        held = mine + theirs
        ready += held.buffered + held.returning
        handed = held.handed
        return QueueInfo(
            queue=queue,
            consumer_count=consumers,
            ready=ready,
            in_flight=handed,
            delayed=delayed,
            expired=expired,
        )

    def _holding(self, queue: str) -> Held:
        """What this driver's subscriptions to ``queue`` (every partition's queue of it)
        hold, for info and the census."""
        states = self._states_of(queue)
        consumers = buffered = handed = 0
        for subscription in self._subscriptions:
            if subscription.state.queue == queue:
                consumers += 1
                buffered += subscription.buffered
                handed += subscription.handed
        returning = sum(state.returned() for state in states)
        holding = tuple(item for state in states for item in state.holding.items())
        return Held(consumers, buffered, handed, returning, holding)

    @staticmethod
    def _learn_holding(states: list[QueueState], heard: tuple[tuple[str, int], ...]) -> None:
        """Holding queues another runtime named: each counted with its own queue's state."""
        by_name = {state.name: state for state in states}
        for name, ms in heard:
            state = by_name.get(name.rpartition(topology.HOLDING_MARK)[0])
            if state is not None and name == topology.holding_name(state.name, ms):
                state.holding.setdefault(name, ms)

    async def wait_idle(self, queue: str, *, timeout_s: float | None = None) -> None:
        """Poll ``idle`` until it holds; a reconnect in between is waited out.

        A message whose delay ends leaves its holding queue for its queue through the
        broker's dead-lettering, and on the way it is counted in neither for a moment:
        while the queue has holding queues, idle must be seen twice, IDLE_CONFIRM_S
        apart.
        """
        async with asyncio.timeout(timeout_s):
            seen_idle = False
            while True:
                try:
                    if await self.idle(queue):
                        if seen_idle or not self._delays(queue):
                            return
                        seen_idle = True
                        await asyncio.sleep(IDLE_CONFIRM_S)
                        continue
                except DriverError:
                    if not self._running:
                        raise
                seen_idle = False
                await asyncio.sleep(IDLE_POLL_S)

    def _delays(self, queue: str) -> bool:
        """Whether ``queue`` has holding queues (delayed nacks, ours or another's)."""
        return any(state.holding for state in self._states_of(queue))
