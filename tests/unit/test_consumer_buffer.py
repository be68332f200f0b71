"""The consumer's prefetch buffer and credits: a delivery put is taken by exactly one
worker, even when the worker it woke is cancelled before it runs (a stop); the fetch
loop is woken once per batch of returned credits."""

from __future__ import annotations

import asyncio
from typing import Any

from wippy_queue.queue.consumer import _Buffer, _Credits


async def test_workers_take_deliveries_in_order_and_wait_for_more() -> None:
    buffer = _Buffer()
    buffer.put("a")  # type: ignore[arg-type]
    buffer.put("b")  # type: ignore[arg-type]
    assert [await buffer.get(), await buffer.get()] == ["a", "b"]
    waiting = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    buffer.put("c")  # type: ignore[arg-type]
    assert await asyncio.wait_for(waiting, 1) == "c"
    assert len(buffer) == 0


async def test_a_worker_cancelled_after_its_wake_passes_the_delivery_on() -> None:
    buffer = _Buffer()
    first = asyncio.create_task(buffer.get())
    second = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)  # both wait
    buffer.put("x")  # type: ignore[arg-type]  # wakes the first...
    first.cancel()  # ...which is cancelled before it runs
    results: list[Any] = await asyncio.wait_for(
        asyncio.gather(first, second, return_exceptions=True), 1
    )
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == "x"


async def test_a_cancelled_waiter_is_skipped_by_the_next_put() -> None:
    buffer = _Buffer()
    gone = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    live = asyncio.create_task(buffer.get())
    await asyncio.sleep(0)
    buffer.put("y")  # type: ignore[arg-type]
    assert await asyncio.wait_for(live, 1) == "y"


async def test_the_fetch_loop_is_woken_once_enough_credits_are_back() -> None:
    """Out of credits, the fetch loop sleeps until ``wake_at`` are free, then takes
    them in one go (one wake-up per batch of settles, not one per settle)."""
    credits = _Credits(4, wake_at=2)
    credits.free = 0
    waiting = asyncio.create_task(credits.wait())
    await asyncio.sleep(0)
    credits.give()
    await asyncio.sleep(0)
    assert not waiting.done()  # one back: not yet
    credits.give()
    await asyncio.wait_for(waiting, 1)
    assert credits.free == 2


def test_credits_never_wait_for_more_than_there_are() -> None:
    assert _Credits(3, wake_at=10).wake_at == 3
    assert _Credits(3, wake_at=0).wake_at == 1
