"""Batches inside, one at a time outside: many callers' items go out in one round trip.

A caller ``submit``s an item and awaits its own result; the items submitted while a
flush is on the wire go out together in the next one (at most ``limit`` at a time),
so a hundred concurrent publishes or acks cost a few round trips, and a lone one
is sent at once (no timer, no added latency). The flush function gets the items
and returns one result (or exception) per item, in order.

The caller's wait is shielded: cancelling it does not take its item out of a
flush, so a cancelled ack is still sent (and a cancelled publish may still land).
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
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._items:
            batch, self._items = self._items[: self._limit], self._items[self._limit :]
            try:
                results = await self._flush([item for item, _ in batch])
            except BaseException as err:  # the whole flush failed: every caller hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                if isinstance(err, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self) -> None:
        """Let what was submitted go out."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
