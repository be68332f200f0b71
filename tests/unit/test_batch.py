"""drivers/batch.py: concurrent callers share flushes, callers just answered join the
next one, a cancelled caller's item still goes out, a failed flush reaches its callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from wippy_queue.drivers.batch import Batcher


class Wire:
    """A flush that records each batch and takes turns of the loop, like a round trip."""

    def __init__(self, fail_first: bool = False, turns: int = 1) -> None:
        self.batches: list[list[int]] = []
        self.fail_first = fail_first
        self.turns = turns

    async def flush(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        for _ in range(self.turns):
            await asyncio.sleep(0)
        if self.fail_first and len(self.batches) == 1:
            raise ConnectionError("the line dropped")
        return [item * 10 for item in items]


async def test_a_lone_item_goes_out_at_once_and_concurrent_ones_together() -> None:
    wire = Wire()
    batcher: Batcher[int, int] = Batcher(wire.flush)
    assert await batcher.submit(1) == 10
    assert await asyncio.gather(*(batcher.submit(i) for i in range(2, 102))) == [
        i * 10 for i in range(2, 102)
    ]
    assert [len(b) for b in wire.batches] == [1, 100]


async def test_callers_answered_by_a_flush_join_the_next_one() -> None:
    """Four workers, started one loop turn apart, that each submit again as soon as
    answered: the first flush carries the first alone, and then every flush all four,
    not groups that take turns on the wire (1, 3, 1, 3, ...)."""
    wire = Wire(turns=3)
    batcher: Batcher[int, int] = Batcher(wire.flush)

    async def worker(k: int) -> None:
        for _ in range(k):
            await asyncio.sleep(0)
        for _ in range(10):
            await batcher.submit(k)

    await asyncio.gather(*(worker(k) for k in range(4)))
    assert [len(b) for b in wire.batches] == [1, *[4] * 9, 3]


async def test_a_cancelled_caller_still_has_its_item_sent() -> None:
    wire = Wire()
    batcher: Batcher[int, int] = Batcher(wire.flush)
    cancelled = asyncio.create_task(batcher.submit(1))
    other = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await other == 20
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await batcher.close()
    assert wire.batches == [[1, 2]]


async def test_a_failed_flush_reaches_its_callers_and_the_next_one_works() -> None:
    wire = Wire(fail_first=True)
    batcher: Batcher[int, int] = Batcher(wire.flush)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await batcher.submit(3) == 30
