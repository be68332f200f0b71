"""Leases kept alive: a consumer's unsettled deliveries are extended before they run out.

Leasing drivers (SQS, Redis, SQLite) hand out deliveries that come back to the
queue after ``Delivery.lease_s`` unless settled. While a consumer holds one
(buffered, in its handler, or waiting for its audit record) the keeper extends the
leases of everything it holds every third of the shortest lease, in one
``Subscription.extend`` call (drivers batch it). A lease the broker no longer
honours is dropped from the keeper and logged; its settle will say ``LostDelivery``.
"""

from __future__ import annotations

import asyncio
import logging

from wippy_queue.errors import DriverError
from wippy_queue.queue.driver import Delivery, LostDelivery, Subscription
from wippy_queue.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, consumer_id: str, subscription: Subscription) -> None:
        self._consumer_id = consumer_id
        self._subscription = subscription
        self._held: set[Delivery] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def hold(self, delivery: Delivery) -> None:
        """Keep ``delivery``'s lease until it is settled (no-op for a delivery without one)."""
        if delivery.lease_s is None:
            return
        self._held.add(delivery)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"{self._consumer_id}:leases"
            )

    def _live(self) -> list[Delivery]:
        self._held = {d for d in self._held if not d.settled}
        return list(self._held)

    async def _run(self) -> None:
        while True:
            live = self._live()
            if not live:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(min(d.lease_s or 0.0 for d in live) / 3)
            live = self._live()
            if live:
                await self._extend(live)

    async def _extend(self, deliveries: list[Delivery]) -> None:
        try:
            await self._subscription.extend(deliveries)
        except LostDelivery:
            for delivery in deliveries:  # which ones: drop those, keep the rest
                try:
                    await delivery.extend()
                except LostDelivery as err:
                    self._held.discard(delivery)
                    log.warning("consumer %s: %s", self._consumer_id, err)
                except DriverError:
                    pass
        except DriverError as err:  # the broker is unreachable: try again next round
            log.warning("consumer %s: extending leases failed: %s", self._consumer_id, err)
        except Exception:  # a driver's bug: said, and tried again next round (a keeper
            # that died here would let every lease it holds run out from then on)
            log.exception("consumer %s: extending leases failed", self._consumer_id)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        self._held.clear()
