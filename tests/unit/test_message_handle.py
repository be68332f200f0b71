"""A handler thread's ack or nack and the consumer's own settle never both settle."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from wippy_queue.queue.handle import MessageHandle
from wippy_queue.queue.message import Message
from wippy_queue.queue.outcome import ACK, Outcome, Reason


def recording_handle(settled: list[Outcome]) -> MessageHandle:
    async def settle(outcome: Outcome) -> None:
        settled.append(outcome)

    loop = asyncio.get_running_loop()
    return MessageHandle(Message("m-1", b"{}", {}), {}, "t:jobs", settle, loop)


async def test_a_threads_ack_settles_before_its_handlers_result_is_taken() -> None:
    settled: list[Outcome] = []
    handle = recording_handle(settled)
    thread = threading.Thread(target=handle.ack)
    thread.start()
    thread.join()  # (the loop is blocked meanwhile: the ack waits for it)
    await asyncio.sleep(0)  # one loop turn: what the thread posted runs first
    returned = Outcome.nack(Reason.RETURNED_FALSE)  # what the handler then returned
    assert await handle.finish(returned) == ACK
    assert settled == [ACK]


async def test_a_threads_ack_after_its_call_was_given_up_on_is_not_a_second_settle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The thread acks as the consumer times the call out: the consumer's outcome
    settles the message once, and the late ack is reported, not settled again."""
    settled: list[Outcome] = []
    handle = recording_handle(settled)
    thread = threading.Thread(target=handle.ack)
    thread.start()
    thread.join()
    timed_out = Outcome.nack(Reason.TIMEOUT, "ran past 1s")
    with caplog.at_level(logging.WARNING, logger="wippy_queue.queue.handle"):
        assert await handle.finish(timed_out) == timed_out
        await asyncio.sleep(0)  # one loop turn: the thread's late ack runs now
    assert settled == [timed_out]
    assert "came after the handler was given up on" in caplog.text
