"""Giving messages back when settling cannot go on: a failed audit batch gives back
every message that waited on it, a release that fails does not keep the rest from
going back, and a stop cuts off a settle stuck past its time (a dead letter waiting
for room in a full queue) instead of waiting for it for ever."""

from __future__ import annotations

import asyncio
from typing import Any

from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import Delivery
from wippy_queue.queue.message import Message
from wippy_queue.queue.middleware import Job
from wippy_queue.queue.outcome import ACK, Outcome, Reason
from wippy_queue.queue.settle import RetryPolicy, Settler

WAIT_S = 5.0


class Held(Delivery):
    """A delivery that records what was done with it; ``fail_release`` makes its
    release fail (the broker is gone, or its disk full)."""

    __slots__ = ("done", "fail_release")

    def __init__(self, n: int, *, fail_release: bool = False) -> None:
        super().__init__(Message(f"m{n}", b"{}", {}), 1)
        self.done: list[str] = []
        self.fail_release = fail_release

    async def _ack(self) -> None:
        self.done.append("ack")

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None:
        self.done.append("nack")

    async def _release(self) -> None:
        if self.fail_release:
            raise DriverError("database or disk is full")
        self.done.append("release")


class Batch:
    """A settle hook whose records share one write (as the audit trail's under
    ``fsync: always``): every settle waits on the same future."""

    gate = None

    def __init__(self) -> None:
        self.future: asyncio.Future[None] | None = None

    def before_settle(self, *args: Any) -> asyncio.Future[None]:
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
        return self.future

    def lost(self, *args: Any) -> None: ...


class Full:
    """A dead-letter queue with no room: a put waits (as a full memory queue's does)."""

    id = "t:dead"
    ttl_s = None

    async def put(self, message: Message) -> None:
        await asyncio.Event().wait()


class Jobs:
    id = "t:jobs"


def settler(hook: Batch, done: list[str], errors: list[Exception], **policy: Any) -> Settler:
    return Settler(
        "t:c",
        queue=Jobs(),  # type: ignore[arg-type]
        policy=RetryPolicy(**policy),
        hooks=(hook,),
        done=lambda d: done.append(d.message.id),
        on_error=errors.append,
    )


def job(delivery: Delivery) -> Job:
    return Job("t:c", "t:jobs", None, delivery.message, None, delivery.attempt)


async def test_a_failed_batch_gives_every_message_back_though_one_release_fails() -> None:
    hook, done, errors = Batch(), [], []
    s = settler(hook, done, errors)
    held = [Held(0, fail_release=True), Held(1), Held(2)]
    for delivery in held:
        await s.settle(job(delivery), delivery, 0.0, ACK)
    assert hook.future is not None
    hook.future.set_exception(OSError(28, "No space left on device"))  # the write failed
    async with asyncio.timeout(WAIT_S):
        while len(done) < 3:
            await asyncio.sleep(0)
    assert [d.done for d in held] == [[], ["release"], ["release"]]  # none acked
    assert sorted(done) == ["m0", "m1", "m2"]  # every credit back
    assert s.pending == 0
    assert [str(e) for e in errors] == ["database or disk is full"]


async def test_a_stop_cuts_off_a_settle_stuck_past_its_time_and_gives_it_back() -> None:
    hook, done, errors = Batch(), [], []
    s = settler(hook, done, errors, dead_letter=Full(), max_attempts=1)
    delivery = Held(0)
    await s.settle(job(delivery), delivery, 0.0, Outcome.nack(Reason.HANDLER_ERROR, "failed"))
    assert hook.future is not None
    hook.future.set_result(None)  # written: the dead letter now waits for room
    await asyncio.sleep(0)
    async with asyncio.timeout(WAIT_S):
        await s.drain(0.05)
    assert delivery.done == ["release"]  # back to its queue, not stranded in flight
    assert done == ["m0"]


async def test_a_stop_leaves_a_batch_shared_with_other_consumers_alone() -> None:
    """Two consumers' records share one audit write; one consumer stops before it is
    done: its message goes back, and the other's is still acked once the write is
    (before, the stop cancelled the shared write's future: the other consumer's
    message went back too, though its record said ack)."""
    hook = Batch()
    done_one: list[str] = []
    done_two: list[str] = []
    one = settler(hook, done_one, [])
    two = settler(hook, done_two, [])
    stopping, going_on = Held(0), Held(1)
    await one.settle(job(stopping), stopping, 0.0, ACK)
    await two.settle(job(going_on), going_on, 0.0, ACK)
    async with asyncio.timeout(WAIT_S):
        await one.drain(0.01)
    assert stopping.done == ["release"] and done_one == ["m0"]
    assert hook.future is not None and not hook.future.done()
    hook.future.set_result(None)  # the write is done
    async with asyncio.timeout(WAIT_S):
        while not done_two:
            await asyncio.sleep(0)
    assert going_on.done == ["ack"]
