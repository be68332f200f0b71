"""A consumer channel and its settles: acks batched where safe, stale tags refused.

Delivery tags belong to one channel. A settle for a channel that is gone (closed by
the broker, or of a connection since replaced) raises ``LostDelivery``: it is never
sent on another channel, where the tag would mean someone else's delivery.

Acks are gathered until ``batch`` of them wait or ``ACK_TICK_S`` has passed since the
first (a nack, a close or a lost channel sends them at once), then go out together:
the longest run of them at the front of the channel's unsettled tags as one
``basic.ack(multiple)``, the rest one by one. A run is only ever acked as a prefix
of what the channel still holds, so ``multiple`` never covers a delivery that was
not asked to be acked; nacks are sent before the acks gathered with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from wippy_queue.drivers.amqp.link import CLIENT_ERRORS
from wippy_queue.queue.driver import LostDelivery

log = logging.getLogger(__name__)

_SEND_ERRORS: tuple[type[Exception], ...] = (LostDelivery, *CLIENT_ERRORS)

#: the longest an ack waits for others to go out with
ACK_TICK_S = 0.002


class ConsumerChannel:
    """One channel a subscription consumes on, with its unsettled delivery tags."""

    def __init__(self, channel: Any, raw: Any, generation: int, *, batch: int = 1) -> None:
        self.channel = channel
        self.raw = raw
        self.generation = generation
        #: delivered and not yet settled, in tag order
        self.outstanding: dict[int, None] = {}
        self.dead = False
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._others: list[tuple[Coroutine[Any, Any, None], asyncio.Future[None]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: consumer tag -> the callback its deliveries go to (see deliver.py)
        self.routes: dict[str, Callable[[Any], None]] = {}
        #: acks gathered before they go out (at most)
        self._batch = max(1, batch)
        self._timer: asyncio.TimerHandle | None = None

    def alive(self, generation: int) -> bool:
        return not self.dead and generation == self.generation and not self.raw.is_closed

    def lost(self, what: str) -> LostDelivery:
        return LostDelivery(
            f"{what}: its channel is gone (a lost connection or a broker restart); "
            "the broker delivers the message again"
        )

    def ack(self, tag: int) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self._acks[tag] = future
        if len(self._acks) >= self._batch:
            self._schedule()
        elif self._timer is None and not self._scheduled:
            self._timer = asyncio.get_running_loop().call_later(ACK_TICK_S, self._schedule)
        return future

    def nack(self, tag: int, *, requeue: bool) -> asyncio.Future[None]:
        """``basic.nack``: requeue (the broker counts it) or drop."""
        self.outstanding.pop(tag, None)
        future = asyncio.get_running_loop().create_future()
        self._others.append((self.raw.basic_nack(tag, requeue=requeue, wait=False), future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        self._scheduled = False
        others, self._others = self._others, []
        acks, self._acks = self._acks, {}
        for coro, future in others:
            await self._send(coro, [future])
        if not acks:
            return
        top, run = 0, []
        for tag in self.outstanding:
            if tag not in acks:
                break
            top = tag
            run.append(acks.pop(tag))
        for _ in run:
            del self.outstanding[next(iter(self.outstanding))]
        if run:
            await self._send(self.raw.basic_ack(top, multiple=len(run) > 1, wait=False), run)
        for tag, future in acks.items():
            self.outstanding.pop(tag, None)
            await self._send(self.raw.basic_ack(tag, wait=False), [future])

    async def _send(
        self, coro: Coroutine[Any, Any, None], futures: list[asyncio.Future[None]]
    ) -> None:
        try:
            if self.dead:
                coro.close()
                raise self.lost("settle")
            await coro
        except _SEND_ERRORS as err:
            self.dead = True
            lost = err if isinstance(err, LostDelivery) else self.lost(f"settle ({err})")
            for future in futures:
                if not future.done():
                    future.set_exception(lost)
            return
        for future in futures:
            if not future.done():
                future.set_result(None)

    def abandon(self) -> None:
        """The channel is gone: every settle waiting to be sent is lost."""
        self.dead = True
        self.outstanding.clear()
        if self._acks or self._others:
            self._schedule()  # each fails as lost

    async def close(self) -> None:
        """Close once the settles already asked for are sent."""
        if self._acks or self._others:
            self._schedule()
        await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.dead = True
        try:
            await self.channel.close()
        except (Exception, asyncio.CancelledError):
            log.debug("closing a consumer channel failed", exc_info=True)
