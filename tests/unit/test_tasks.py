"""A stop ends its tasks even when one swallows its cancellation, as Python 3.11's
``asyncio.wait_for`` does when the cancel lands as its future completes (redis-py
awaits every socket write through it)."""

from __future__ import annotations

import asyncio

from wippy_queue.tasks import cancel_and_wait


async def swallows_once_then_waits(swallowed: list[bool]) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        swallowed.append(True)  # as wait_for does: the caller never hears of it
    await asyncio.Event().wait()  # and it waits for more work, forever


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    swallowed: list[bool] = []
    task = asyncio.create_task(swallows_once_then_waits(swallowed))
    plain = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([task, plain])
    assert swallowed == [True]
    assert task.cancelled() and plain.cancelled()


async def test_done_tasks_and_their_errors_are_taken_as_they_are() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fails())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait([failed, finished])
    await cancel_and_wait([failed, finished])  # nothing to cancel, nothing raised
    assert isinstance(failed.exception(), ValueError) and finished.result() is None
