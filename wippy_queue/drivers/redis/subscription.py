"""One consumer's membership in a queue's group: reads, claims, leases and settles.

A fetch task keeps a local buffer filled with at most the free share of
``max_unsettled`` (new entries with ``XREADGROUP``; now and then entries whose
holder stopped renewing them, with ``XAUTOCLAIM``); ``receive`` hands them out one
at a time. It reads once half the prefetch is free, not after every settle: one
read then brings many entries, while the consumer still holds the other half.
Settles from every worker go to the server together in one script call.
Closing gives back whatever this member holds and has not handed out, including
entries a read cut off by the close had already taken.

On a partitioned queue it reads the stream of its partition, or of every partition:
those in the queue's set of partitions, looked up again every ``REFRESH_S`` so that
partitions made later (by any process) are read too. One read takes from every stream
in turn (a read's streams start one further each time, and their entries are handed
out interleaved), so one busy partition cannot starve another. Each delivery keeps
its stream: it is settled, renewed and requeued there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from wippy_queue.drivers.batch import Batcher
from wippy_queue.drivers.redis.config import RedisConsumerOptions, RedisQueueOptions
from wippy_queue.drivers.redis.entries import Entry, parse, read_streams
from wippy_queue.drivers.redis.link import (
    CONNECTION_ERRORS,
    GROUP,
    Keys,
    Link,
    ensure_partition,
    partition_stream,
)
from wippy_queue.drivers.redis.wire import Wire
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import (
    Delivery,
    LostDelivery,
    SubscribeSpec,
    Subscription,
    SubscriptionClosed,
)
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: (kind, entry id, delivery count, delay_ms): see ``scripts.SETTLE``; then its stream
Settle = tuple[str, str, int, int, str]
EXPIRED = "expired"
#: a read waits at most this long for half the prefetch to be free (then reads what is)
REFILL_WAIT_S = 0.02
#: a read's reply may come this long after its BLOCK time before the line counts as lost
READ_MARGIN_S = 10.0
#: a subscription says it is alive this often (``info`` counts the live ones)
HEARTBEAT_S = 5.0
#: how long a close waits for an unblocked read to come back
UNBLOCK_WAIT_S = 2.0
#: a reader of every partition looks for new partitions this often
REFRESH_S = 1.0


class RedisDelivery(Delivery):
    __slots__ = ("_count", "_sub", "entry_id", "stream")

    def __init__(self, sub: RedisSubscription, entry: Entry, count: int, stream: str) -> None:
        super().__init__(entry.message, entry.base + count, sub.lease_s, entry.malformed)
        self._sub = sub
        self._count = count
        self.entry_id = entry.entry_id
        #: the stream it came from (its partition's)
        self.stream = stream

    @property
    def key(self) -> tuple[str, str]:
        return self.stream, self.entry_id

    async def _ack(self) -> None:
        await self._sub.settle(self, ("ack", self.entry_id, self._count, 0, self.stream))

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None:
        if requeue:
            op = ("requeue", self.entry_id, self._count, round(delay_s * 1000), self.stream)
        else:
            kind = EXPIRED if reason == EXPIRED else "ack"
            op = (kind, self.entry_id, self._count, 0, self.stream)
        await self._sub.settle(self, op)

    async def _release(self) -> None:
        await self._sub.settle(self, ("release", self.entry_id, self._count, 0, self.stream))

    async def _extend(self) -> None:
        await self._sub.extend([self])

    @property
    def count(self) -> int:
        return self._count


class RedisSubscription(Subscription):
    def __init__(
        self,
        driver: Link,
        spec: SubscribeSpec,
        queue_options: RedisQueueOptions,
        options: RedisConsumerOptions,
        partitioned: bool = False,
    ) -> None:
        self.driver = driver
        self.spec = spec
        self.keys = Keys(spec.queue)
        #: reads every partition of a partitioned queue (looking for new ones)
        self._all_partitions = partitioned and spec.partition is None
        #: the streams it reads: its partition's, or every partition's
        self.streams = [
            partition_stream(spec.queue, spec.partition or "") if partitioned else spec.queue
        ]
        self._refresh_at = 0.0
        #: where the next read starts in ``streams`` (turns, for fairness)
        self._turn = 0
        self.name = f"{spec.consumer_id}@{driver.instance}-{uuid.uuid4().hex[:4]}"
        self.lease_s = float(queue_options.visibility_timeout)
        self._block_ms = max(1, round(float(options.read_block) * 1000))
        self._buffer: deque[RedisDelivery] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        #: handed out by ``receive`` and not yet settled, by (stream, entry id)
        self._handed: dict[tuple[str, str], RedisDelivery] = {}
        self._closed = False
        self._fetcher: asyncio.Task[None] | None = None
        self._settles: Batcher[Settle, bool] = Batcher(self._flush_settles)
        self._claim_at = 0.0
        self._beat_at = 0.0
        #: a read is on the wire (a close unblocks it rather than cutting it off)
        self._reading = False
        #: per stream, where the next claim pass goes on
        self._claim_from: dict[str, str] = {}
        self._read_wire: Wire | None = None
        self._settle_wire: Wire | None = None
        #: read again once this many credits are free: half the prefetch. Until then
        #: the consumer still holds at least the other half ready for its workers, so
        #: none waits, and one read brings many entries instead of one per settle
        self._refill_at = max(1, min(spec.prefetch, spec.max_unsettled) // 2)

    async def open(self) -> None:
        stream = self.streams[0]
        if stream != self.spec.queue:  # its partition's stream, maybe before any message
            await self.driver.call(
                lambda c: ensure_partition(c, self.spec.queue, stream),
                f"joining a partition of {self.spec.queue!r}",
            )
        await self.driver.call(
            lambda c: c.xgroup_createconsumer(stream, GROUP, self.name),
            f"joining queue {self.spec.queue!r}",
        )
        if self._all_partitions:
            await self._refresh()
        await self._beat()
        # reads block on the server: they and the settles each have a connection
        self._read_wire = self.driver.new_wire(
            timeout_s=self._block_ms / 1000 + READ_MARGIN_S, name=f"read:{uuid.uuid4().hex[:8]}"
        )
        self._settle_wire = self.driver.new_wire()
        self.driver.subscriptions.add(self)
        self._fetcher = asyncio.create_task(self._fetch(), name=f"{self.name}:fetch")

    # -- taking deliveries ------------------------------------------------------------

    async def receive(self) -> Delivery:
        while True:
            delivery = self.take_ready()
            if delivery is not None:
                return delivery
            if self._closed or not self.driver.running:
                raise SubscriptionClosed(f"subscription to {self.spec.queue!r} is closed")
            self._arrived.clear()
            await self._arrived.wait()

    def take_ready(self) -> Delivery | None:
        if not self._buffer:
            return None
        delivery = self._buffer.popleft()
        self._handed[delivery.key] = delivery
        return delivery

    def _free(self) -> int:
        return self.spec.max_unsettled - len(self._handed) - len(self._buffer)

    async def _room_to_read(self) -> int:
        """How many entries to read: wait until ``_refill_at`` credits are free, or a
        few have been free for ``REFILL_WAIT_S`` (settles held up, e.g. by an audit
        write, must not keep the buffer empty)."""
        deadline = None
        while True:
            free = self._free()
            if free >= self._refill_at or self._closed:
                return free
            self._room.clear()
            if free <= 0:  # still say it is alive while its handlers hold everything
                deadline = None
                try:
                    async with asyncio.timeout(max(self._beat_at - time.monotonic(), 0.0)):
                        await self._room.wait()
                except TimeoutError:
                    await self._beat_quietly()
                continue
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + REFILL_WAIT_S
            try:
                async with asyncio.timeout_at(deadline):
                    await self._room.wait()
            except TimeoutError:
                return self._free()

    async def _beat(self) -> None:
        """Say this subscription is alive (``info`` counts the live ones)."""
        now_ms = int(time.time() * 1000)
        self._beat_at = time.monotonic() + HEARTBEAT_S
        await self.driver.call(
            lambda c: c.zadd(self.keys.members, {self.name: now_ms}),
            f"joining queue {self.spec.queue!r}",
        )

    async def _beat_quietly(self) -> None:
        """``_beat`` between reads: a failure waits for the next one (reads see it)."""
        try:
            await self._beat()
        except (DriverError, RedisError, *CONNECTION_ERRORS) as err:
            log.debug("subscription %s: heartbeat not written: %s", self.name, err)

    async def _fetch(self) -> None:
        while not self._closed and self.driver.running:
            free = await self._room_to_read()
            if free <= 0 or self._closed:
                continue
            entries = await self._take(free)
            if entries is None:
                break  # the driver stopped
            for entry, count, stream in entries:
                self._buffer.append(RedisDelivery(self, entry, count, stream))
            if entries:
                self._arrived.set()
        self._arrived.set()  # receivers see the close

    async def _refresh(self) -> None:
        """Read every partition the queue's set names (those made since included)."""
        self._refresh_at = time.monotonic() + REFRESH_S
        streams = await self.driver.streams_of(self.spec.queue)
        if streams != self.streams:
            self.streams = streams

    async def _take(self, free: int) -> list[tuple[Entry, int, str]] | None:
        """Up to ``free`` entries: claimed from a dead member first, else new ones;
        none after a passing error, None once the driver has stopped."""
        try:
            if time.monotonic() >= self._beat_at:
                await self._beat()
            if self._all_partitions and time.monotonic() >= self._refresh_at:
                await self._refresh()
            client = await self.driver.wait_up()
            return await self._claim(client, free) or await self._read(free)
        except CONNECTION_ERRORS as err:
            self.driver.connection_lost(err)
            return []
        except DriverError as err:
            if not self.driver.running:
                return None
            # (the server refused a command: READONLY after a failover, OOM, BUSY)
            log.error("subscription %s: reading failed: %s; retrying", self.name, err)
            await asyncio.sleep(1.0)
            return []
        except RedisError as err:
            if "NOGROUP" in str(err):  # a stream (or its group) was deleted: make it again
                with contextlib.suppress(RedisError, DriverError, *CONNECTION_ERRORS):
                    await self._regroup()
                return []
            log.error("subscription %s: reading failed: %s; retrying", self.name, err)
            await asyncio.sleep(1.0)
            return []

    async def _regroup(self) -> None:
        queue = self.spec.queue
        for stream in self.streams:

            async def make(client: aioredis.Redis, stream: str = stream) -> None:
                if stream != queue:
                    await ensure_partition(client, queue, stream)
                    return
                try:
                    await client.xgroup_create(queue, GROUP, id="0", mkstream=True)
                except ResponseError as err:
                    if "BUSYGROUP" not in str(err):
                        raise

            await self.driver.call(make, f"making {stream!r} again")

    async def _read(self, count: int) -> list[tuple[Entry, int, str]]:
        """New entries: of every stream it reads, each read starting at the next one;
        never more than ``count`` in all."""
        assert self._read_wire is not None
        streams = self.streams
        if len(streams) > 1:
            turn = self._turn % len(streams)
            self._turn = turn + 1
            streams = (streams[turn:] + streams[:turn])[:count]
        each = max(count // len(streams), 1)  # COUNT is per stream
        read = ("XREADGROUP", "GROUP", GROUP, self.name, "COUNT", each, "BLOCK", self._block_ms)
        self._reading = True
        try:
            (reply,) = await self._read_wire.call(
                [(*read, "STREAMS", *streams, *(">" for _ in streams))]
            )
        finally:
            self._reading = False
        if isinstance(reply, ResponseError):
            raise reply
        by_stream = read_streams(reply)
        if len(by_stream) == 1:
            ((stream, entries),) = by_stream
            return [(parse(eid, fields), 1, stream) for eid, fields in entries]
        # interleaved: the first entry of each stream, then the second of each, ...
        taken: list[tuple[Entry, int, str]] = []
        for rank in range(max((len(e) for _, e in by_stream), default=0)):
            for stream, entries in by_stream:
                if rank < len(entries):
                    eid, fields = entries[rank]
                    taken.append((parse(eid, fields), 1, stream))
        return taken

    async def _claim(self, client: aioredis.Redis, count: int) -> list[tuple[Entry, int, str]]:
        """Entries idle past the visibility timeout (their holder died), now ours."""
        now = time.monotonic()
        if now < self._claim_at:
            return []
        taken: list[tuple[Entry, int, str]] = []
        done = True
        for stream in self.streams:
            if len(taken) >= count:
                done = False
                break
            next_from, claimed, _deleted = await client.xautoclaim(
                stream,
                GROUP,
                self.name,
                round(self.lease_s * 1000),
                self._claim_from.get(stream, "0-0"),
                count - len(taken),
            )
            went_on = next_from.decode() if isinstance(next_from, bytes) else str(next_from)
            self._claim_from[stream] = went_on
            done = done and went_on == "0-0"
            claimed = [(eid, fields) for eid, fields in claimed if fields is not None]
            if claimed:
                counts = await self._counts(client, stream, [eid for eid, _ in claimed])
                taken += [(parse(e, fields), counts.get(e, 1), stream) for e, fields in claimed]
        if done:  # a full pass: rest until the next one is due
            self._claim_at = now + max(self.lease_s / 2, 0.05)
        return taken

    async def _counts(
        self, client: aioredis.Redis, stream: str, ids: Sequence[bytes]
    ) -> dict[bytes, int]:
        """Each entry's delivery count, from the group's pending list: one exact look
        per entry, in one round trip (a range would also hold this member's other
        entries, and could leave a claimed one out of its reply)."""
        async with client.pipeline(transaction=False) as pipe:
            for eid in ids:
                pipe.xpending_range(stream, GROUP, min=eid, max=eid, count=1)
            replies = await pipe.execute()
        return {
            _bytes(row["message_id"]): int(row["times_delivered"])
            for rows in replies
            for row in rows
        }

    # -- settling ---------------------------------------------------------------------

    async def settle(self, delivery: RedisDelivery, op: Settle) -> None:
        try:
            lost = await self._settles.submit(op)
        finally:
            self._handed.pop(delivery.key, None)
            self._room.set()
        if self._closed and not self._handed and self.driver.running:
            await self._leave()  # the last delivery of a closed subscription is settled
        if op[3] > 0 and not lost:
            self.driver.delayed_added()
        if lost:
            raise LostDelivery(
                f"message {delivery.message.id} (entry {delivery.entry_id}) on "
                f"{self.spec.queue!r} is no longer held by this consumer: its lease passed "
                "to another one, which will settle it"
            )

    async def _flush_settles(self, ops: Sequence[Settle]) -> list[bool]:
        """One script call per stream (partition), all in one round trip."""
        wire = self._settle_wire
        assert wire is not None
        by_stream: dict[str, list[Settle]] = {}
        for op in ops:
            by_stream.setdefault(op[4], []).append(op)
        commands = []
        for stream, settles in by_stream.items():
            keys = Keys(stream)
            args = [GROUP, self.name, keys.delayed_prefix, *(v for op in settles for v in op[:4])]
            commands.append(
                wire.evalsha(
                    self.driver.script("SETTLE"),
                    [stream, keys.delayed, self.keys.expired],
                    args,
                )
            )
        what = f"settling on {self.spec.queue!r}"
        replies = await self.driver.call(lambda _: wire.call(commands), what)
        gone: set[tuple[str, str]] = set()
        for stream, lost in zip(by_stream, replies, strict=True):
            if isinstance(lost, ResponseError):
                raise DriverError(f"subscription {self.name}: {what} failed: {lost}") from lost
            gone.update((stream, _text(entry_id)) for entry_id in lost)
        return [(op[4], op[1]) in gone for op in ops]

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        held = [d for d in deliveries if isinstance(d, RedisDelivery) and not d.settled]
        if not held:
            return
        by_stream: dict[str, list[RedisDelivery]] = {}
        for delivery in held:
            by_stream.setdefault(delivery.stream, []).append(delivery)
        lost = []
        for stream, those in by_stream.items():
            args = [GROUP, self.name, *(v for d in those for v in (d.entry_id, str(d.count)))]

            async def renew(client: aioredis.Redis, s: str = stream, a: list[str] = args) -> Any:
                return await self.driver.script("EXTEND")(keys=[s], args=a, client=client)

            lost += await self.driver.call(renew, f"renewing leases on {self.spec.queue!r}")
        if lost:
            log.warning(
                "subscription %s: %d lease(s) already passed to another consumer",
                self.name,
                len(lost),
            )

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.driver.subscriptions.discard(self)
        self._buffer.clear()  # given back below, with whatever a cut-off read took
        self._arrived.set()
        self._room.set()
        if self._fetcher is not None:
            await self._stop_reading(self._fetcher)
        if self.driver.running:
            try:
                await self._give_back_unhanded()
            except DriverError as err:
                log.warning("subscription %s: giving back on close failed: %s", self.name, err)
        await self._settles.close()
        for wire in (self._read_wire, self._settle_wire):
            if wire is not None:
                await wire.close()

    async def _stop_reading(self, fetcher: asyncio.Task[None]) -> None:
        """End the fetch loop without cutting a read off mid-way: the server may have
        handed a blocked read entries the moment the connection is cut, and they
        would sit with this member. A blocked read is unblocked (it returns at once,
        with what it has, which is given back below); only then is the loop ended."""
        if self._reading and self.driver.running and self._read_wire is not None:
            with contextlib.suppress(DriverError, RedisError, *CONNECTION_ERRORS):
                await self.driver.call(self._unblock, "unblocking a read")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UNBLOCK_WAIT_S):
                    await asyncio.shield(fetcher)
        await cancel_and_wait([fetcher])

    async def _unblock(self, client: aioredis.Redis) -> None:
        assert self._read_wire is not None
        for row in await client.client_list(_type="normal"):
            if row.get("name") == self._read_wire.name:
                await client.client_unblock(int(row["id"]))

    async def _give_back_unhanded(self) -> None:
        """Release every entry this member holds that no worker has (the buffer, and
        what a read cut off by the close took); leave the group when nothing is left."""

        ops: list[Settle] = []
        for stream in self.streams:

            async def pending(client: aioredis.Redis, s: str = stream) -> list[dict[str, Any]]:
                rows: list[dict[str, Any]] = await client.xpending_range(
                    s, GROUP, min="-", max="+", count=100_000, consumername=self.name
                )
                return rows

            rows = await self.driver.call(pending, f"reading what {self.name} holds")
            ops += [
                ("release", _text(row["message_id"]), int(row["times_delivered"]), 0, stream)
                for row in rows
                if (stream, _text(row["message_id"])) not in self._handed
            ]
        if ops:  # (through the batcher: one flush on the settle wire at a time)
            await asyncio.gather(*(self._settles.submit(op) for op in ops))
        if not self._handed:
            await self._leave()

    async def _leave(self) -> None:
        """Leave the members, and the group of each stream where this member holds
        nothing (atomic: a member's pending entries would go with it, never to be
        delivered again)."""
        args = [GROUP, self.name]
        for stream in self.streams:
            keys = [stream, self.keys.members]

            async def leave(client: aioredis.Redis, k: list[str] = keys) -> Any:
                return await self.driver.script("LEAVE")(keys=k, args=args, client=client)

            await self.driver.call(leave, f"leaving queue {self.spec.queue!r}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
