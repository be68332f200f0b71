"""``queue.driver.sqlite``: durable queues in one SQLite file, shared by the processes
of one machine, with nothing to install or start.

Every operation goes to the instance's writer thread (``writer.py``), which commits
concurrent publishes, claims and settles together; a publish or settle returns once
its commit is on disk (``synchronous: full``). A delivery is a lease on its row
(``store.py``): a settle checks the lease's token, so a settle after another process
took the message over raises ``LostDelivery`` instead of touching it. Consumers in
this process are woken at once by a commit that made a message ready; those of other
processes find it on their next poll (``poll_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from wippy_queue.drivers.sqlite.config import (
    CAPABILITIES,
    SqliteDriverConfig,
    SqliteQueueOptions,
    database_path,
)
from wippy_queue.drivers.sqlite.store import CONSUMER_TTL_S, Claimed, Effects, Store
from wippy_queue.drivers.sqlite.writer import Request, Writer
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import (
    Delivery,
    Driver,
    LostDelivery,
    QueueInfo,
    QueueSpec,
    SubscribeSpec,
    Subscription,
    SubscriptionClosed,
)
from wippy_queue.queue.message import Message
from wippy_queue.registry.entry import Entry
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

EXPIRED = "expired"
#: the most messages one claim leases
CLAIM_MAX = 256
#: how often ``wait_idle`` looks again when no commit here removed a message (other
#: processes' acks)
IDLE_POLL_S = 0.02


class _Waiters:
    """Coroutines waiting for something to change; woken all at once, or by a timeout."""

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[None]] = set()

    async def wait(self, timeout_s: float | None) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._futures.add(future)
        timer = None if timeout_s is None else loop.call_later(max(timeout_s, 0), _wake, future)
        try:
            await future
        finally:
            self._futures.discard(future)
            if timer is not None:
                timer.cancel()

    def wake_all(self) -> None:
        for future in self._futures:
            _wake(future)
        self._futures.clear()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Queue:
    """What this instance knows of one declared queue."""

    def __init__(self, name: str, options: SqliteQueueOptions) -> None:
        self.name = name
        self.options = options
        self.max_length = options.max_length
        self.lease_s = float(options.visibility_timeout)
        self.partitioned = False
        self.receivers = _Waiters()
        self.publishers = _Waiters()
        self.subscriptions: set[SqliteSubscription] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")

    def wake_at(self, due: float) -> None:
        """Wake the receivers when a delayed message falls due (wall-clock ``due``)."""
        if due >= self.timer_at:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = due
        self.timer = asyncio.get_running_loop().call_later(max(due - time.time(), 0), self._due)

    def _due(self) -> None:
        self.timer, self.timer_at = None, float("inf")
        self.receivers.wake_all()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_at = None, float("inf")
        self.receivers.wake_all()
        self.publishers.wake_all()


class SqliteDelivery(Delivery):
    __slots__ = ("_seq", "_subscription", "_token")

    def __init__(self, subscription: SqliteSubscription, claimed: Claimed, lease_s: float) -> None:
        super().__init__(claimed.message, claimed.attempt, lease_s)
        self._subscription = subscription
        self._seq = claimed.seq
        self._token = claimed.token

    @property
    def lease(self) -> tuple[int, int]:
        return self._seq, self._token

    async def _ack(self) -> None:
        """Joins the batch's other acks: one statement removes them all (see ``_settle``
        on cancellation: the ack stays in)."""
        subscription = self._subscription
        try:
            acked = subscription.driver.writer.join("ack", self.lease, Store.ack_many, "ack")
        finally:
            subscription.settled()
        if not await acked:
            raise self.lost("ack")

    def ack_then(self, done: Callable[[BaseException | None], None]) -> None:
        self._once()
        subscription = self._subscription
        then = partial(self._acked, done)
        try:
            subscription.driver.writer.join_then("ack", self.lease, Store.ack_many, "ack", then)
        finally:
            subscription.settled()

    def _acked(
        self,
        done: Callable[[BaseException | None], None],
        acked: bool | None,
        error: BaseException | None,
    ) -> None:
        done(error if error is not None or acked else self.lost("ack"))

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None:
        seq, token, queue = self._seq, self._token, self._subscription.queue
        if requeue:
            consumer = self._subscription.consumer
            await self._settle(
                lambda store: store.requeue(queue, seq, token, delay_s, consumer), "nack"
            )
        else:
            expired = reason == EXPIRED
            await self._settle(lambda s: s.drop(queue, seq, token, expired=expired), "nack")

    async def _release(self) -> None:
        seq, token, queue = self._seq, self._token, self._subscription.queue
        await self._settle(lambda store: store.release(queue, seq, token), "release")

    async def _extend(self) -> None:
        await self._subscription.extend([self])

    async def _settle(self, op: Callable[[Store], bool], what: str) -> None:
        """A cancelled caller still settles: the request stays queued and commits (only
        the caller's future is cancelled), as a shield would, for one future less."""
        subscription = self._subscription
        try:
            request = subscription.driver.submit(op, f"{what} of message {self.message.id}")
        finally:
            subscription.settled()
        if not await request.future:
            raise self.lost(what)

    def lost(self, what: str) -> LostDelivery:
        return LostDelivery(
            f"{what} of message {self.message.id} on queue {self._subscription.queue!r}: its "
            "lease ran out and another consumer took it over (it is delivered again; this "
            "settle did nothing)"
        )


class SqliteSubscription(Subscription):
    def __init__(self, driver: SqliteDriver, queue: _Queue, spec: SubscribeSpec) -> None:
        self.driver = driver
        self._queue = queue
        self.queue = queue.name
        self.consumer = spec.consumer_id
        self.partition = spec.partition
        #: this subscription's row in ``consumers`` (what makes it count as live)
        self.id = secrets.randbits(62) + 1
        self._max_unsettled = max(spec.max_unsettled, 1)
        #: claimed, not yet handed out
        self._buffer: deque[SqliteDelivery] = deque()
        #: handed out and not settled, plus the buffer
        self._unsettled = 0
        self._room = _Waiters()
        self._claiming: asyncio.Future[float | None] | None = None
        self._releases: list[asyncio.Future[bool]] = []
        self._error: BaseException | None = None
        #: someone receives: settles may claim ahead for them
        self._receiving = False
        self._closed = False
        queue.subscriptions.add(self)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def settled(self) -> None:
        self._unsettled -= 1
        self._room.wake_all()
        self._refill()

    def _refill(self) -> None:
        """Claim ahead as soon as a settle makes room, so that the claim shares the
        settle's commit (the buffer counts: never past ``max_unsettled``)."""
        if self._claiming is not None or not self._receiving or self._closed:
            return
        room = self._max_unsettled - self._unsettled
        if room > 0 and self.driver.running and self.driver.writer.open:
            self._claiming = self._claim()

    async def receive(self) -> Delivery:
        self._receiving = True
        while True:
            if self._closed or not self.driver.running:
                raise SubscriptionClosed(f"subscription to {self.queue!r} is closed")
            delivery = self.take_ready()
            if delivery is not None:
                return delivery
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            room = self._max_unsettled - self._unsettled
            if room <= 0:  # the consumer's limit, honoured
                await self._room.wait(None)
                continue
            if self._claiming is None:
                self._claiming = self._claim()
            next_due = await asyncio.shield(self._claiming)
            if self._buffer or self._closed or not self.driver.running:
                continue
            wait_s = self.driver.poll_interval_s
            if next_due is not None:
                wait_s = min(wait_s, next_due - time.time())
            await self._queue.receivers.wait(wait_s)

    def take_ready(self) -> Delivery | None:
        if self._closed or not self._buffer:
            return None
        return self._buffer.popleft()

    def _room_now(self) -> int:
        """Room for more deliveries: read on the writer thread when the claim runs, so a
        claim takes the room every settle queued before it made (room only grows while
        the claim waits: its own result is the only thing that takes room)."""
        return max(min(self._max_unsettled - self._unsettled, CLAIM_MAX), 0)

    def _claim(self) -> asyncio.Future[float | None]:
        """Lease messages into the buffer, as many as there is room for when the claim
        runs; resolves with the time the next message falls due."""
        queue, lease_s, owner = self.queue, self._queue.lease_s, self.driver.owner
        consumer, partition = self.consumer, self.partition
        partitioned = self._queue.partitioned

        def claim(store: Store) -> tuple[list[Claimed], float | None]:
            limit = self._room_now()
            if not limit:
                return [], None
            return store.claim(queue, limit, lease_s, owner, consumer, partition, partitioned)

        # (handed over before the commit is synced: handled while the acks with it sync)
        request = self.driver.submit(claim, f"claim from {queue!r}", synced=False)
        done: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()

        def claimed(future: asyncio.Future[tuple[list[Claimed], float | None]]) -> None:
            self._claiming = None
            if future.exception() is not None:
                self._error = future.exception()
                done.set_result(None)
                return
            rows, next_due = future.result()
            for row in rows:
                self._unsettled += 1
                delivery = SqliteDelivery(self, row, lease_s)
                if self._closed or not self.driver.running:
                    self._give_back(delivery)
                else:
                    self._buffer.append(delivery)
            done.set_result(next_due)

        request.future.add_done_callback(claimed)
        return done

    def _give_back(self, delivery: SqliteDelivery) -> None:
        """Release a claimed delivery nobody was handed (closing)."""
        delivery.settled = True
        seq, token = delivery.lease
        queue = self.queue
        self.settled()
        if self.driver.writer.open:
            request = self.driver.submit(
                lambda store: store.release(queue, seq, token), "release on close"
            )
            self._releases.append(request.future)

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew these leases (and those of claimed, not yet handed out ones) in one commit."""
        held = [d for d in deliveries if isinstance(d, SqliteDelivery) and not d.settled]
        held += self._buffer
        if not held:
            return
        leases = [d.lease for d in held]
        lease_s = self._queue.lease_s
        request = self.driver.submit(
            lambda store: store.extend(leases, lease_s), f"lease renewal on {self.queue!r}"
        )
        kept = await asyncio.shield(request.future)
        lost = [d for d, ok in zip(held, kept, strict=True) if not ok]
        for delivery in lost:
            if delivery in self._buffer:  # never handed out now: another process has it
                self._buffer.remove(delivery)
                delivery.settled = True
                self.settled()
        if lost:
            ids = ", ".join(d.message.id for d in lost)
            raise LostDelivery(
                f"leases on queue {self.queue!r} ran out and were taken over before they "
                f"could be renewed: {ids}"
            )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.subscriptions.discard(self)
        self._room.wake_all()
        self._queue.receivers.wake_all()
        await self.abandon()
        if self.driver.writer.open:
            subscription = self.id
            with contextlib.suppress(DriverError):
                await self.driver.call(lambda store: store.unsubscribe(subscription), "close")

    async def abandon(self) -> None:
        """Give back what was claimed but never handed out (closing, stopping)."""
        if self._claiming is not None:
            await asyncio.shield(self._claiming)
        while self._buffer:
            self._give_back(self._buffer.popleft())
        releases, self._releases = self._releases, []
        if releases:
            await asyncio.gather(*releases, return_exceptions=True)


class SqliteDriver(Driver):
    """``queue.driver.sqlite``."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        entry_id: str,
        path: str | Path,
        *,
        synchronous: str = "full",
        poll_interval_s: float = 0.05,
    ) -> None:
        super().__init__(entry_id)
        self.path = Path(path)
        self.poll_interval_s = poll_interval_s
        self.writer = Writer(self.path, synchronous, self._committed, self._broken)
        #: this instance, as the owner of the leases it takes
        self.owner = secrets.randbits(62) + 1
        self._queues: dict[str, _Queue] = {}
        self._running = False
        #: commits here that removed messages so far, and who waits for one
        self._removals = 0
        self._idlers = _Waiters()
        #: how often this instance's subscriptions are renewed in ``consumers``
        self.keep_alive_s = CONSUMER_TTL_S / 3
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    def from_entry(cls, entry: Entry) -> SqliteDriver:
        config = entry.config
        assert isinstance(config, SqliteDriverConfig)
        return cls(
            entry.id,
            database_path(entry),
            synchronous=config.synchronous,
            poll_interval_s=config.poll_interval,
        )

    @property
    def running(self) -> bool:
        return self._running

    @property
    def commits(self) -> int:
        """Transactions committed with changes so far (each one fsync with synchronous
        full, but for one of claims alone)."""
        return self.writer.commits

    def submit(self, op: Callable[[Store], T], what: str, *, synced: bool = True) -> Request[T]:
        return self.writer.submit(op, what, synced=synced)

    async def call(self, op: Callable[[Store], T], what: str) -> T:
        request = self.submit(op, what)
        try:
            return await request.future
        except asyncio.CancelledError:
            request.cancelled = True
            raise

    async def start(self) -> None:
        if self._running:
            return
        self.failed = asyncio.get_running_loop().create_future()
        await self.writer.start()
        self._running = True
        self._keeper = asyncio.get_running_loop().create_task(
            self._keep_alive(), name=f"{self.entry_id} keep-alive"
        )

    async def _keep_alive(self) -> None:
        """Renew the ``consumers`` row of every subscription here, claiming or not: a
        consumer whose handlers hold all its credit claims nothing while they run, and
        must still count as live (``info``'s consumers; the nackers rule, which lets a
        consumer skip a message only while another live one may take it)."""
        while True:
            await asyncio.sleep(self.keep_alive_s)
            rows = [
                (s.id, s.queue, s.consumer, s.partition)
                for state in self._queues.values()
                for s in state.subscriptions
            ]
            if not rows:
                continue
            try:
                await self.call(partial(_renew, rows), "keep-alive")
            except DriverError as err:  # (the writer is down: it says so itself)
                log.debug("sqlite %s: keep-alive not written: %s", self.entry_id, err)

    def _broken(self, error: DriverError) -> None:
        """The writer stopped writing (a failed sync): the supervisor restarts us."""
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(error)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        names, owner = list(self._queues), self.owner
        try:  # (the writer stops even if this stop is cancelled midway)
            if self._keeper is not None:
                keeper, self._keeper = self._keeper, None
                await cancel_and_wait([keeper])
            for queue in self._queues.values():
                queue.close()
            for queue in self._queues.values():
                for subscription in list(queue.subscriptions):
                    await subscription.close()
            # a clean stop hands back the messages this instance delayed, ready now (as the
            # memory driver does); after a crash they wait out their delay instead
            with contextlib.suppress(DriverError):
                await self.call(lambda store: store.undelay(owner, names), "stop")
        finally:
            await self.writer.stop()

    def _committed(self, effects: Effects) -> None:
        if effects.removed:
            self._removals += 1
            self._idlers.wake_all()
        for name in effects.ready:
            queue = self._queues.get(name)
            if queue is not None:
                queue.receivers.wake_all()
        for name in effects.room:
            queue = self._queues.get(name)
            if queue is not None:
                queue.publishers.wake_all()
        if self._running:
            for name, due in effects.due:
                queue = self._queues.get(name)
                if queue is not None:
                    queue.wake_at(due)

    async def declare(self, spec: QueueSpec) -> None:
        if not self._running:
            raise self.not_running_error()
        options = spec.options if spec.options is not None else SqliteQueueOptions()
        if not isinstance(options, SqliteQueueOptions):
            raise DriverError(f"queue {spec.id}: sqlite driver options expected, got {options!r}")
        existing = self._queues.get(spec.name)
        if existing is not None:
            _check_same(spec, existing.options, options)
            existing.partitioned = existing.partitioned or spec.partitioned
            return
        name, max_length, lease_s = spec.name, options.max_length, options.visibility_timeout
        await self.call(lambda store: store.declare(name, max_length, lease_s), f"declare {name!r}")
        state = self._queues.setdefault(spec.name, _Queue(spec.name, options))
        state.partitioned = state.partitioned or spec.partitioned

    def _queue(self, name: str) -> _Queue:
        return self.declared(self._queues, name)

    async def publish(self, queue: str, message: Message, partition: str = "") -> None:
        if not self._running:
            raise self.not_running_error()
        state = self._queue(queue)
        max_length = state.max_length
        part = partition if state.partitioned else None
        while True:
            publish = (queue, message, max_length, part)
            try:
                published = await self.writer.join(
                    "publish", publish, Store.publish_many, "publish", withdraw=True
                )
            except DriverError as err:  # (the batch's error: each caller names its own)
                raise DriverError(
                    f"{err}; message {message.id} was not published to queue {queue!r}"
                ) from err
            if published:
                return
            await state.publishers.wait(self.poll_interval_s)  # full: wait for room
            if not self._running:
                raise self.not_running_error()

    async def subscribe(self, spec: SubscribeSpec) -> Subscription:
        if not self._running:
            raise self.not_running_error()
        subscription = SqliteSubscription(self, self._queue(spec.queue), spec)
        sid, queue, consumer, part = subscription.id, spec.queue, spec.consumer_id, spec.partition
        await self.call(lambda store: store.subscribe(sid, queue, consumer, part), "subscribe")
        return subscription

    async def idle(self, queue: str) -> bool:
        """One index probe for any row of the queue left: ``info`` counts them all, and
        a join polls this on the writer thread every 20 ms (9% of the writer's time
        while draining a 40,000-message queue)."""
        self._queue(queue)
        if not self._running:
            raise self.not_running_error()
        return not await self.call(lambda store: store.holds_any(queue), f"idle check of {queue!r}")

    async def wait_idle(self, queue: str, *, timeout_s: float | None = None) -> None:
        """Look again as soon as a commit here removed a message (the last ack of a
        drain ends a join at once), else every ``IDLE_POLL_S`` (other processes')."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    seen = self._removals
                    if await self.idle(queue):
                        return
                    if self._removals == seen:  # (one during the look: look again now)
                        await self._idlers.wait(IDLE_POLL_S)
        except TimeoutError:
            raise TimeoutError(f"queue {queue!r} not idle after {timeout_s}s") from None

    async def info(self, queue: str) -> QueueInfo:
        state = self._queue(queue)
        if not self._running:
            raise self.not_running_error()
        ready, in_flight, delayed, expired, consumers = await self.call(
            lambda store: store.info(queue), f"info of {queue!r}"
        )
        # claimed ahead by a subscription here but not handed out yet: still ready for
        # the consumer (other processes see them in flight, as leases)
        buffered = min(sum(s.buffered for s in state.subscriptions), in_flight)
        ready, in_flight = ready + buffered, in_flight - buffered
        return QueueInfo(
            queue=queue,
            consumer_count=consumers,
            ready=ready,
            in_flight=in_flight,
            delayed=delayed,
            expired=expired,
        )


def _renew(rows: list[tuple[int, str, str, str | None]], store: Store) -> None:
    for row in rows:
        store.subscribe(*row)


def _check_same(spec: QueueSpec, old: SqliteQueueOptions, new: SqliteQueueOptions) -> None:
    for field in ("max_length", "visibility_timeout", "ttl"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            raise DriverError(
                f"queue {spec.name!r} is declared with {field} {before}; {spec.id} asks for "
                f"{after}: give the two one value"
            )
