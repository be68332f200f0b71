"""One consumer's membership in a queue's group: reads, claims, leases and settles.

A fetch task keeps a local buffer filled with at most the free share of
``max_unsettled`` (new entries with ``XREADGROUP``; now and then entries whose
holder stopped renewing them, with ``XAUTOCLAIM``); ``receive`` hands them out one
at a time. It reads once half the prefetch is free, not after every settle: one
read then brings many entries, while the consumer still holds the other half.
Settles from every worker go to the server together in one script call.
Closing gives back whatever this member holds and has not handed out, including
entries a read cut off by the close had already taken.
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
from wippy_queue.drivers.redis.entries import Entry, parse, read_reply
from wippy_queue.drivers.redis.link import CONNECTION_ERRORS, GROUP, Keys, Link
from wippy_queue.drivers.redis.wire import Wire
from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import (
    Delivery,
    LostDelivery,
    SubscribeSpec,
    Subscription,
    SubscriptionClosed,
)

log = logging.getLogger(__name__)

#: (kind, entry id, delivery count, delay_ms): see ``scripts.SETTLE``
Settle = tuple[str, str, int, int]
EXPIRED = "expired"
#: a read waits at most this long for half the prefetch to be free (then reads what is)
REFILL_WAIT_S = 0.02
#: a read's reply may come this long after its BLOCK time before the line counts as lost
READ_MARGIN_S = 10.0
#: a subscription says it is alive this often (``info`` counts the live ones)
HEARTBEAT_S = 5.0
#: how long a close waits for an unblocked read to come back
UNBLOCK_WAIT_S = 2.0


class RedisDelivery(Delivery):
    __slots__ = ("_count", "_sub", "entry_id")

    def __init__(self, sub: RedisSubscription, entry: Entry, count: int) -> None:
        super().__init__(entry.message, entry.base + count, sub.lease_s, entry.malformed)
        self._sub = sub
        self._count = count
        self.entry_id = entry.entry_id

    async def _ack(self) -> None:
        await self._sub.settle(self, ("ack", self.entry_id, self._count, 0))

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None:
        if requeue:
            op = ("requeue", self.entry_id, self._count, round(delay_s * 1000))
        else:
            op = (EXPIRED if reason == EXPIRED else "ack", self.entry_id, self._count, 0)
        await self._sub.settle(self, op)

    async def _release(self) -> None:
        await self._sub.settle(self, ("release", self.entry_id, self._count, 0))

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
    ) -> None:
        self.driver = driver
        self.spec = spec
        self.keys = Keys(spec.queue)
        self.name = f"{spec.consumer_id}@{driver.instance}-{uuid.uuid4().hex[:4]}"
        self.lease_s = float(queue_options.visibility_timeout)
        self._block_ms = max(1, round(float(options.read_block) * 1000))
        self._buffer: deque[RedisDelivery] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        #: handed out by ``receive`` and not yet settled, by entry id
        self._handed: dict[str, RedisDelivery] = {}
        self._closed = False
        self._fetcher: asyncio.Task[None] | None = None
        self._settles: Batcher[Settle, bool] = Batcher(self._flush_settles)
        self._claim_at = 0.0
        self._beat_at = 0.0
        #: a read is on the wire (a close unblocks it rather than cutting it off)
        self._reading = False
        self._claim_from = "0-0"
        self._read_wire: Wire | None = None
        self._settle_wire: Wire | None = None
        #: read again once this many credits are free: half the prefetch. Until then
        #: the consumer still holds at least the other half ready for its workers, so
        #: none waits, and one read brings many entries instead of one per settle
        self._refill_at = max(1, min(spec.prefetch, spec.max_unsettled) // 2)

    async def open(self) -> None:
        await self.driver.call(
            lambda c: c.xgroup_createconsumer(self.keys.stream, GROUP, self.name),
            f"joining queue {self.spec.queue!r}",
        )
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
            if self._buffer:
                delivery = self._buffer.popleft()
                self._handed[delivery.entry_id] = delivery
                return delivery
            if self._closed or not self.driver.running:
                raise SubscriptionClosed(f"subscription to {self.spec.queue!r} is closed")
            self._arrived.clear()
            await self._arrived.wait()

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
            if free <= 0:
                deadline = None
                await self._room.wait()
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

    async def _fetch(self) -> None:
        while not self._closed and self.driver.running:
            free = await self._room_to_read()
            if free <= 0 or self._closed:
                continue
            entries = await self._take(free)
            if entries is None:
                break  # the driver stopped
            for entry, count in entries:
                self._buffer.append(RedisDelivery(self, entry, count))
            if entries:
                self._arrived.set()
        self._arrived.set()  # receivers see the close

    async def _take(self, free: int) -> list[tuple[Entry, int]] | None:
        """Up to ``free`` entries: claimed from a dead member first, else new ones;
        none after a passing error, None once the driver has stopped."""
        try:
            if time.monotonic() >= self._beat_at:
                await self._beat()
            client = await self.driver.wait_up()
            return await self._claim(client, free) or await self._read(free)
        except CONNECTION_ERRORS as err:
            self.driver.connection_lost(err)
            return []
        except DriverError:
            return None
        except RedisError as err:
            log.error("subscription %s: reading failed: %s; retrying", self.name, err)
            await asyncio.sleep(1.0)
            return []

    async def _read(self, count: int) -> list[tuple[Entry, int]]:
        assert self._read_wire is not None
        read = ("XREADGROUP", "GROUP", GROUP, self.name, "COUNT", count, "BLOCK", self._block_ms)
        self._reading = True
        try:
            (reply,) = await self._read_wire.call([(*read, "STREAMS", self.keys.stream, ">")])
        finally:
            self._reading = False
        if isinstance(reply, ResponseError):
            raise reply
        return [(parse(eid, fields), 1) for eid, fields in read_reply(reply)]

    async def _claim(self, client: aioredis.Redis, count: int) -> list[tuple[Entry, int]]:
        """Entries idle past the visibility timeout (their holder died), now ours."""
        now = time.monotonic()
        if now < self._claim_at:
            return []
        next_from, claimed, _deleted = await client.xautoclaim(
            self.keys.stream, GROUP, self.name, round(self.lease_s * 1000), self._claim_from, count
        )
        self._claim_from = next_from.decode() if isinstance(next_from, bytes) else str(next_from)
        if self._claim_from == "0-0":  # a full pass: rest until the next one is due
            self._claim_at = now + max(self.lease_s / 2, 0.05)
        claimed = [(eid, fields) for eid, fields in claimed if fields is not None]
        if not claimed:
            return []
        counts = await self._counts(client, [eid for eid, _ in claimed])
        return [(parse(eid, fields), counts.get(eid, 1)) for eid, fields in claimed]

    async def _counts(self, client: aioredis.Redis, ids: Sequence[bytes]) -> dict[bytes, int]:
        """Each entry's delivery count, from the group's pending list."""
        low, high = min(ids), max(ids)
        rows = await client.xpending_range(
            self.keys.stream, GROUP, min=low, max=high, count=len(ids) * 4, consumername=self.name
        )
        return {_bytes(row["message_id"]): int(row["times_delivered"]) for row in rows}

    # -- settling ---------------------------------------------------------------------

    async def settle(self, delivery: RedisDelivery, op: Settle) -> None:
        try:
            lost = await self._settles.submit(op)
        finally:
            self._handed.pop(delivery.entry_id, None)
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
        wire = self._settle_wire
        assert wire is not None
        keys = [self.keys.stream, self.keys.delayed, self.keys.expired]
        args = [GROUP, self.name, self.keys.delayed_prefix, *(v for op in ops for v in op)]
        command = wire.evalsha(self.driver.script("SETTLE"), keys, args)
        what = f"settling on {self.spec.queue!r}"
        (lost,) = await self.driver.call(lambda _: wire.call([command]), what)
        if isinstance(lost, ResponseError):
            raise DriverError(f"subscription {self.name}: {what} failed: {lost}") from lost
        gone = {_text(entry_id) for entry_id in lost}
        return [op[1] in gone for op in ops]

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        held = [d for d in deliveries if isinstance(d, RedisDelivery) and not d.settled]
        if not held:
            return
        args = [GROUP, self.name, *(v for d in held for v in (d.entry_id, str(d.count)))]
        lost = await self.driver.call(
            lambda c: self.driver.script("EXTEND")(keys=[self.keys.stream], args=args, client=c),
            f"renewing leases on {self.spec.queue!r}",
        )
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
        fetcher.cancel()
        await asyncio.gather(fetcher, return_exceptions=True)

    async def _unblock(self, client: aioredis.Redis) -> None:
        assert self._read_wire is not None
        for row in await client.client_list(_type="normal"):
            if row.get("name") == self._read_wire.name:
                await client.client_unblock(int(row["id"]))

    async def _give_back_unhanded(self) -> None:
        """Release every entry this member holds that no worker has (the buffer, and
        what a read cut off by the close took); leave the group when nothing is left."""

        async def pending(client: aioredis.Redis) -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = await client.xpending_range(
                self.keys.stream, GROUP, min="-", max="+", count=100_000, consumername=self.name
            )
            return rows

        rows = await self.driver.call(pending, f"reading what {self.name} holds")
        ops = [
            ("release", _text(row["message_id"]), int(row["times_delivered"]), 0)
            for row in rows
            if _text(row["message_id"]) not in self._handed
        ]
        if ops:
            await self._flush_settles(ops)
        if not self._handed:
            await self._leave()

    async def _leave(self) -> None:
        """Leave the members, and the group when this member holds nothing (atomic:
        a member's pending entries would go with it, never to be delivered again)."""
        keys, args = [self.keys.stream, self.keys.members], [GROUP, self.name]
        await self.driver.call(
            lambda c: self.driver.script("LEAVE")(keys=keys, args=args, client=c),
            f"leaving queue {self.spec.queue!r}",
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
