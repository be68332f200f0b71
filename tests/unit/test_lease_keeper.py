"""The lease keeper goes on through a failed renewal, whatever failed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from wippy_queue.queue.driver import Delivery, Subscription
from wippy_queue.queue.leases import LeaseKeeper
from wippy_queue.queue.message import Message

WAIT_S = 5.0


class Leased(Delivery):
    async def _ack(self) -> None: ...

    async def _nack(self, *, requeue: bool, delay_s: float, reason: str) -> None: ...

    async def _release(self) -> None: ...


class Renewals(Subscription):
    """Its first renewal fails with a bug of the driver's (not a DriverError)."""

    def __init__(self) -> None:
        self.calls = 0
        self.renewed = asyncio.Event()

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the driver")
        self.renewed.set()

    async def receive(self) -> Delivery:
        raise NotImplementedError

    async def close(self) -> None: ...


async def test_a_renewal_that_fails_with_a_bug_does_not_end_the_keeper(
    caplog: pytest.LogCaptureFixture,
) -> None:
    subscription = Renewals()
    keeper = LeaseKeeper("t:c", subscription)
    keeper.hold(Leased(Message("m0", b"{}", {}), 1, lease_s=0.03))
    try:
        async with asyncio.timeout(WAIT_S):
            await subscription.renewed.wait()  # renewed again after the failure
    finally:
        await keeper.stop()
    assert subscription.calls >= 2
    assert "a bug in the driver" in caplog.text
