"""Pipelined acks (drivers that commit settles in groups): the settler starts the ack
with ``Delivery.ack_then`` and goes on; the consumer's credit comes back as soon as the
driver has the ack (once, whatever becomes of it), the next messages are handled while
it commits, and a stop waits for the ones still out and never gives one back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import Delivery, LostDelivery
from wippy_queue.queue.message import Message
from wippy_queue.queue.middleware import Job
from wippy_queue.queue.outcome import ACK, Action
from wippy_queue.queue.settle import RetryPolicy, Settler

Done = Callable[[BaseException | None], None]


class HeldAck(Delivery):
    """An ack the test finishes by hand (as a commit would)."""

    __slots__ = ("finish",)

    def __init__(self, n: int) -> None:
        super().__init__(Message(f"m{n}", b"{}", {}), 1)
        self.finish: Done | None = None

    def ack_then(self, done: Done) -> None:
        self._once()
        self.finish = done

    async def _ack(self) -> None:
        raise AssertionError("a pipelined ack goes through ack_then")

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None: ...

    async def _release(self) -> None: ...


class Lost:
    gate = None

    def __init__(self) -> None:
        self.told: list[tuple[str, Action, str]] = []

    def before_settle(self, *args: Any) -> None:
        return None

    def lost(self, job: Job, action: Action, error: str) -> None:
        self.told.append((job.message.id, action, error))


def settler(done: list[str], errors: list[Exception], hook: Lost | None = None) -> Settler:
    return Settler(
        "t:c",
        queue=None,  # type: ignore[arg-type]  # (an ack never reads it)
        policy=RetryPolicy(),
        hooks=(hook,) if hook else (),
        pipelined=True,
        done=lambda d: done.append(d.message.id),
        on_error=errors.append,
    )


def job(delivery: Delivery) -> Job:
    return Job("t:c", "t:q", None, delivery.message, None, 1)


async def test_the_credit_comes_back_once_the_driver_has_the_ack() -> None:
    done: list[str] = []
    s = settler(done, [])
    deliveries = [HeldAck(n) for n in range(3)]
    for d in deliveries:
        await s.settle(job(d), d, 0.0, ACK)  # returns at once: the worker goes on
    assert done == ["m0", "m1", "m2"] and s.pending == 3  # committing, credits back
    for d in reversed(deliveries):
        assert d.finish is not None
        d.finish(None)
    assert done == ["m0", "m1", "m2"] and s.pending == 0  # not a second time


async def test_a_stop_never_gives_back_a_message_whose_ack_is_out() -> None:
    """(A worker cancelled just after its settle: the ack stands, no second credit.)"""
    done: list[str] = []
    s = settler(done, [])
    d = HeldAck(1)
    await s.settle(job(d), d, 0.0, ACK)
    await s.cut_off(d)
    assert d.finish is not None
    d.finish(None)
    assert done == ["m1"]


async def test_a_lost_ack_is_told_to_the_hooks_and_a_failed_one_to_the_consumer() -> None:
    done: list[str] = []
    errors: list[Exception] = []
    hook = Lost()
    s = settler(done, errors, hook)
    lost, failed = HeldAck(1), HeldAck(2)
    for d in (lost, failed):
        await s.settle(job(d), d, 0.0, ACK)
    assert lost.finish is not None and failed.finish is not None
    lost.finish(LostDelivery("its lease was taken over"))
    broken = DriverError("the disk is full")
    failed.finish(broken)
    assert done == ["m1", "m2"]  # each gave its credit back once, when handed over
    assert hook.told == [("m1", Action.ACK, "its lease was taken over")]
    assert errors == [broken]  # a lost ack is no error: the message comes again


async def test_a_stop_waits_for_the_acks_still_out_within_its_bound() -> None:
    done: list[str] = []
    s = settler(done, [])
    d = HeldAck(1)
    await s.settle(job(d), d, 0.0, ACK)
    draining = asyncio.create_task(s.drain(5.0))
    await asyncio.sleep(0.01)
    assert not draining.done(), "drain returned with an ack still out"
    assert d.finish is not None
    d.finish(None)
    async with asyncio.timeout(1.0):
        await draining
    assert done == ["m1"]


async def test_the_default_ack_then_runs_the_ack_and_calls_back() -> None:
    """A group-commit driver that does not override it still works (a task per ack)."""
    heard: list[BaseException | None] = []
    acked = asyncio.Event()

    class Plain(HeldAck):
        __slots__ = ()
        ack_then = Delivery.ack_then

        async def _ack(self) -> None:
            acked.set()

    d = Plain(1)
    d.ack_then(heard.append)
    async with asyncio.timeout(1.0):
        await acked.wait()
        while not heard:
            await asyncio.sleep(0)
    assert heard == [None]
    with pytest.raises(DriverError, match="already settled"):
        d.ack_then(heard.append)


async def test_an_ack_refused_at_once_is_a_failed_settle_not_a_crash() -> None:
    """(The driver stopped: the settle fails as an awaited one would, and nothing waits.)"""
    done: list[str] = []
    errors: list[Exception] = []
    s = settler(done, errors)

    class Refused(HeldAck):
        __slots__ = ()

        def ack_then(self, done: Done) -> None:
            self._once()
            raise DriverError("the database is closed")

    d = Refused(1)
    await s.settle(job(d), d, 0.0, ACK)
    assert done == ["m1"] and [str(e) for e in errors] == ["the database is closed"]
    assert s.pending == 0
    async with asyncio.timeout(1.0):
        await s.drain(5.0)  # nothing is left to wait for
