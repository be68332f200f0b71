"""Batches inside, one at a time outside: many callers' items go out in one round trip.

A caller ``submit``s an item and awaits its own result; the items submitted while a
flush is on the wire go out together in the next one (at most ``limit`` at a time),
so a hundred concurrent publishes or acks cost a few round trips, and a lone one
is sent at once (no timer, no added latency). The flush function gets the items
and returns one result (or exception) per item, in order.

After a flush, the next one waits one turn of the event loop: the callers it just
answered come back within that turn (a worker whose ack returned takes its next
message and acks it; a producer publishes its next message) and join it, instead
of splitting into groups that take turns on the wire.

Cancelling a caller's wait does not take its item out of a flush: a cancelled ack
is still sent (and a cancelled publish may still land); its result is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence["R | BaseException"]]]


class Batcher(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], *, limit: int = 500) -> None:
        self._flush = flush
        self._limit = limit
        self._items: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        # a cancelled wait cancels only this future: the item stays in its batch
        return await future

    async def _run(self) -> None:
        try:
            while self._items:
                batch, self._items = self._items[: self._limit], self._items[self._limit :]
                await self._send(batch)
                await asyncio.sleep(0)  # let the callers just answered join the next one
        except asyncio.CancelledError:
            _fail(self._items, asyncio.CancelledError())
            self._items = []
            raise

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._flush([item for item, _ in batch])
        except BaseException as err:  # the whole flush failed: every caller hears it
            _fail(batch, err)
            if isinstance(err, asyncio.CancelledError):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Let what was submitted go out."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _fail(items: Sequence[tuple[object, asyncio.Future[R]]], err: BaseException) -> None:
    for _, future in items:
        if not future.done():
            future.set_exception(err)
